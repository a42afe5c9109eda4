"""The synthetic identity dataset: build, resumable sharded runs, poses, report, writers."""
