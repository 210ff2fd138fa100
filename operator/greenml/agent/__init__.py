"""The node agent (``greenml agent``): applies the GPU power caps the operator publishes.

A DaemonSet on GPU nodes (chart value ``agent.enabled``). Each pass it lists its node's
pods, learns which GPUs each holds (``podresources``: the kubelet PodResources API, or the
device plugin's NVIDIA_VISIBLE_DEVICES), sets each GPU's power limit to the cap the pod's
annotation ``greenml.io/power-cap-watts`` asks for — clamped to the device's own min/max
constraints — restores the default limit when the pod ends (and on start and exit), and
reports what it did in the pod annotation ``greenml.io/power-cap-applied`` and in metrics.
A cap that fails (no permission, not supported, MIG, GPU lost) is reported and never blocks
or fails the job. NVML is reached only through ``nvml.Nvml`` (tests inject a fake of the
pynvml functions it uses; the real-device check is still to do, see docs/power-caps.md).
"""
