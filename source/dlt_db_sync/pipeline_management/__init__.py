"""Running the sync: the cycle, the sync strategies, change detection, guard rails and the pre-flight check."""
