"""HTTP adapters: thin routes over the domain functions."""
