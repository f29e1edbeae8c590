"""Family-neutral runtime: weight formats (GGUF), compile, step caching (see DESIGN.md section 4)."""
