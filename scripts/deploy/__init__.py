"""Beyond one machine: what the cluster needs, generated from configs/ rather than hand-copied.

Each module owns one artifact (the container image, the Kubernetes manifests, the
KServe bundle, ...) and reads the model YAMLs, the properties and the monitoring
configs as the single source of truth; the generated files are checked against a
regeneration in the unit tests, so they cannot drift from what they were made from.
"""
