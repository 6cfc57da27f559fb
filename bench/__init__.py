"""kcron's benchmarks against Debian's cron: `make bench`, `make bench-quick`."""
