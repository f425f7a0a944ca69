"""Deploy tests: the rendered kustomize overlays, components, ArgoCD entry points, image and policies."""
