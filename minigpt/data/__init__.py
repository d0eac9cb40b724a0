"""Training data: preparing a corpus into token shards, and reading batches from them."""
