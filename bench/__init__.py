"""`bench`: throughput, kernel and loader benchmarks with JSON, Markdown and PNG reports."""
