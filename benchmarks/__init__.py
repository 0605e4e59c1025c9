"""Benchmarks: each script is runnable with one command and prints a table."""
