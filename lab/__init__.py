"""The lab: a Kubernetes-like cluster made of Linux network namespaces on one machine."""
