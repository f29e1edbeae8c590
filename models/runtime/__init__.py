"""Family-neutral runtime: what every model family (One-to-All, UniAnimate, AnimateDiff, ...) shares.

weights.py     safe weight reading (safetensors, shard indexes, ``weights_only`` pickles)
build.py       meta-device construction and the check-keys-then-load step
images.py      IMAGE <-> uint8 frame conversion, hosted output sizes, 4k+1 frame rounding
precision.py   precision / weight-storage names of the loader nodes
fp8.py         fp8 weight storage of Linear layers
lora.py        LoRA files in every common spelling, merged or as side branches
attention.py   attention backends (SDPA, flash-attn 2/3, SageAttention)
placement.py   block swap and offload
gguf.py        GGUF weights (ComfyUI-GGUF layout) kept quantized, dequantized per layer
compile.py     regional torch.compile (each block's forward), a prepare step
step_cache.py  first-block step cache (skip later blocks when the first barely changed), a prepare step
lifecycle.py   the one model life cycle: RuntimeOptions, RuntimeModel (prepare / sample /
               release / progress_total), SampleResult, the ordered prepare steps
"""
