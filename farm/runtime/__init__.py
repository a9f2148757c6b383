"""Where actions run; the only package that imports Ray.

execute      the body of every action, wherever it runs (no Ray)
local        InProcessRuntime: threads of this process (no Ray)
ray_runtime  RayRuntime: Ray tasks for CPU stages, warm GPU worker actors
batching     a GPU worker runs compatible actions in one backend call
cluster      joining a Ray cluster, and the controller's named actor on it
clock        SystemClock
"""
