"""Developer tools: benchmarks, the soak run, the demo models, the configuration page."""
