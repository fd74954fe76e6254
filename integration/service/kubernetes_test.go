package service

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/flowmetrics/flowmetrics/internal/config"
)

var manifestPath = filepath.Join("..", "..", "deploy", "kubernetes", "flowmetrics.yaml")

// manifests holds each document of the file, decoded strictly (an unknown
// or misspelt field is an error, as kubectl apply --validate=strict makes
// it) into the Kubernetes API's own type for its kind.
type manifests struct {
	configMap   *corev1.ConfigMap
	service     *corev1.Service
	statefulSet *appsv1.StatefulSet
}

func decodeManifests(t *testing.T, data []byte) manifests {
	t.Helper()
	var m manifests
	for i, doc := range bytes.Split(data, []byte("\n---\n")) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch tm.APIVersion + "/" + tm.Kind {
		case "v1/ConfigMap":
			m.configMap = &corev1.ConfigMap{}
			obj = m.configMap
		case "v1/Service":
			m.service = &corev1.Service{}
			obj = m.service
		case "apps/v1/StatefulSet":
			m.statefulSet = &appsv1.StatefulSet{}
			obj = m.statefulSet
		default:
			t.Fatalf("document %d: unexpected %s %s", i, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, tm.Kind, err)
		}
	}
	if m.configMap == nil || m.service == nil || m.statefulSet == nil {
		t.Fatal("want a ConfigMap, a Service and a StatefulSet")
	}
	return m
}

func TestKubernetesManifests(t *testing.T) {
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	m := decodeManifests(t, data)
	ss := m.statefulSet
	pod := ss.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("got %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]

	// One writer per store: the embedded store is not shared.
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 1 {
		t.Errorf("replicas: got %v, want 1", ss.Spec.Replicas)
	}
	if got := ss.Spec.Selector.MatchLabels; !subset(got, ss.Spec.Template.Labels) || !subset(m.service.Spec.Selector, ss.Spec.Template.Labels) || len(got) == 0 {
		t.Errorf("selectors %v and %v must match the pod's labels %v", got, m.service.Spec.Selector, ss.Spec.Template.Labels)
	}

	// The store on a volume from the claim template, at the config's data_dir.
	cfg := decodeConfig(t, m.configMap)
	var claim string
	for _, vct := range ss.Spec.VolumeClaimTemplates {
		claim = vct.Name
		if _, ok := vct.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
			t.Errorf("volume claim %s requests no storage", vct.Name)
		}
	}
	if mount := mountAt(c, cfg.DataDir); mount == nil || mount.Name != claim || claim == "" {
		t.Errorf("data_dir %s: want the volume of the claim template (%q) mounted there, got %+v", cfg.DataDir, claim, mount)
	}

	// The config file serve is given is the ConfigMap's, mounted there.
	if len(c.Args) < 3 || c.Args[0] != "serve" || c.Args[1] != "-config" {
		t.Fatalf("args: got %q, want serve -config FILE", c.Args)
	}
	if mount := mountAt(c, c.Args[2]); mount == nil || mount.SubPath != "flowmetrics.yaml" || !volumeFromConfigMap(pod, mount.Name, m.configMap.Name) {
		t.Errorf("%s: want the ConfigMap %s's flowmetrics.yaml mounted there", c.Args[2], m.configMap.Name)
	}

	// The port serve listens on is the container's, the probes' and the
	// Service's.
	_, port, _ := strings.Cut(cfg.HTTP.Listen, ":")
	var portName string
	for _, p := range c.Ports {
		if fmt.Sprint(p.ContainerPort) == port {
			portName = p.Name
		}
	}
	if portName == "" {
		t.Fatalf("no container port %s (http.listen %s)", port, cfg.HTTP.Listen)
	}
	// Readiness asks /healthz (503 while the disk is low or the store
	// failed); liveness only whether serve accepts connections, since a
	// restart frees no disk and a failed store exits by itself.
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port != intstr.FromString(portName) {
		t.Errorf("readiness probe: want GET /healthz on port %s, got %+v", portName, p)
	} else if want := corev1.URISchemeHTTPS; cfg.HTTP.TLS != nil && p.HTTPGet.Scheme != want {
		t.Errorf("readiness probe: scheme %s, want %s (http.tls is set)", p.HTTPGet.Scheme, want)
	}
	if p := c.LivenessProbe; p == nil || p.TCPSocket == nil || p.TCPSocket.Port != intstr.FromString(portName) {
		t.Errorf("liveness probe: want a TCP check of port %s, got %+v", portName, p)
	}
	if len(m.service.Spec.Ports) != 1 || m.service.Spec.Ports[0].TargetPort != intstr.FromString(portName) {
		t.Errorf("service ports: got %+v, want one to %s", m.service.Spec.Ports, portName)
	}

	// The shared secret comes from a Secret, under the variable the
	// config names.
	var fromSecret bool
	for _, e := range c.Env {
		if e.Name == cfg.HTTP.SecretEnv && e.Value == "" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			fromSecret = true
		}
	}
	if !fromSecret {
		t.Errorf("%s: want it from a secretKeyRef", cfg.HTTP.SecretEnv)
	}

	// No root, no privilege.
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod security context: want runAsNonRoot and a non-zero runAsUser, got %+v", psc)
	}
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("container security context: want no privilege escalation and a read-only root, got %+v", sc)
	}

	// Kubernetes waits for the drain and flush before it kills the pod.
	if g := pod.TerminationGracePeriodSeconds; g == nil || float64(*g) <= cfg.HTTP.ShutdownTimeout.Seconds() {
		t.Errorf("terminationGracePeriodSeconds %v: want more than http.shutdown_timeout (%v)", g, cfg.HTTP.ShutdownTimeout)
	}
}

// TestKubernetesDecodingIsStrict: a misspelt field fails the decoding above,
// so a manifest kubectl would refuse cannot pass it.
func TestKubernetesDecodingIsStrict(t *testing.T) {
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Replace(data, []byte("readinessProbe:"), []byte("readynessProbe:"), 1)
	var ss appsv1.StatefulSet
	for _, doc := range bytes.Split(bad, []byte("\n---\n")) {
		if bytes.Contains(doc, []byte("kind: StatefulSet")) {
			if err := yaml.UnmarshalStrict(doc, &ss); err == nil || !strings.Contains(err.Error(), "readynessProbe") {
				t.Errorf("got %v, want an unknown field error", err)
			}
			return
		}
	}
	t.Fatal("no StatefulSet")
}

// decodeConfig loads the ConfigMap's flowmetrics.yaml with the real loader
// and makes serve's own checks, with the secret as the pod gets it.
func decodeConfig(t *testing.T, cm *corev1.ConfigMap) config.Config {
	t.Helper()
	f := filepath.Join(t.TempDir(), "flowmetrics.yaml")
	if err := os.WriteFile(f, []byte(cm.Data["flowmetrics.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(f)
	if err != nil {
		t.Fatalf("ConfigMap %s: %v", cm.Name, err)
	}
	t.Setenv(c.HTTP.SecretEnv, "from-the-secret")
	if err := c.Check(false); err != nil {
		t.Fatalf("ConfigMap %s: serve would refuse it: %v", cm.Name, err)
	}
	return c
}

func mountAt(c corev1.Container, path string) *corev1.VolumeMount {
	for i, m := range c.VolumeMounts {
		if m.MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volumeFromConfigMap(pod corev1.PodSpec, volume, configMap string) bool {
	for _, v := range pod.Volumes {
		if v.Name == volume && v.ConfigMap != nil && v.ConfigMap.Name == configMap {
			return true
		}
	}
	return false
}

func subset(sub, of map[string]string) bool {
	for k, v := range sub {
		if of[k] != v {
			return false
		}
	}
	return true
}
