"""STS AssumeRole sessions per job and their background refresh."""
