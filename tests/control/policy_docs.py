"""Policy manifests the control-plane policy tests share."""

DENY_ALL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}}
"""

ALLOW_A_TO_B = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: 80}]
"""

NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
"""
