"""Side-by-side benchmarks of s3feed against other S3 downloaders (bench/run.py)."""
