"""Converting the packaged GGUF models: reading the file, rebuilding the checkpoint and the tokenizer."""
