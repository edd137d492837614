"""The top layer: the `ssb` command line, job submission and cluster configs."""
