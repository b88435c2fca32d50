"""Command-line tools around crocoman: synthetic data, dataset converters, benchmarks."""
