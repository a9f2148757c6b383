"""Where actions run; the only package that imports Ray.

execute      the body of every action, wherever it runs (no Ray)
local        InProcessRuntime: threads of this process (no Ray)
ray_runtime  RayRuntime: Ray tasks for CPU stages, warm worker actors for GPU and paid stages
workers      warm worker actors that outlive the controller; adoption after a restart
batching     a GPU worker runs compatible actions in one backend call
cluster      joining a Ray cluster, and the controller's named actor on it
clock        SystemClock
"""
