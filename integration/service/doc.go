// Package service checks what runs flowmetrics serve as a service with the
// tools of each platform: the container image built and run by podman, the
// systemd unit by systemd-analyze, the Kubernetes manifests decoded
// strictly into the Kubernetes API's own types. Its dependencies
// (k8s.io/api) stay out of the product's go.mod.
package service
