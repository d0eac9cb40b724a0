"""Generation: the simple token-by-token loop, the fast decoder, sampling and quantization."""
