"""rlm-jobs: Recursive Language Model jobs as a distributed service."""
