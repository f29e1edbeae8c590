"""Headless runs of the shipped graphs: the in-process executor, the main job, Ray batches and
sequence-parallel launches. Nothing here is imported by ComfyUI."""
