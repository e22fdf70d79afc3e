"""Recording: corpus planning, the counters and the runner behind `fastneurons record`."""
