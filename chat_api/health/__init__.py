"""The kubelet's probes: /healthz and /readyz."""
