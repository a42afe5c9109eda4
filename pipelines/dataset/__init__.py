"""The synthetic identity dataset: config, build, resumable sharded runs, poses, export,
report, writers."""
