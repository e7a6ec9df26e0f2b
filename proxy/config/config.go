// Package config reads and validates pullgate's configuration file.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/verify"
)

const (
	APIVersion = "pullgate.io/v1alpha1"
	Kind       = "PullgateConfig"
	// DefaultPath is where the systemd unit points pullgate.
	DefaultPath = "/etc/pullgate/config.yaml"
)

// Config is the file format of DESIGN.md. Field names are the contract.
type Config struct {
	APIVersion          string       `json:"apiVersion"`
	Kind                string       `json:"kind"`
	Listen              string       `json:"listen"`
	RuntimeEndpoint     string       `json:"runtimeEndpoint"`
	ContainerdNamespace string       `json:"containerdNamespace"`
	RegistryConfigPath  string       `json:"registryConfigPath"`
	StateDir            string       `json:"stateDir"`
	MetricsAddress      string       `json:"metricsAddress"`
	ShutdownGracePeriod Duration     `json:"shutdownGracePeriod"`
	Log                 Log          `json:"log"`
	Auth                Auth         `json:"auth"`
	Verification        Verification `json:"verification"`
	DefaultAction       string       `json:"defaultAction"`
	// Policies are ordered rules; the first that matches an image decides.
	Policies []verify.RuleSpec `json:"policies,omitempty"`
	// Cluster, when set, adds the rules of the cluster's NodeImagePolicy objects after these.
	Cluster *Cluster `json:"cluster,omitempty"`
}

// Cluster is how pullgate watches NodeImagePolicies: with the node's own identity.
type Cluster struct {
	// Kubeconfig is kubelet's own (e.g. /var/lib/kubelet/kubeconfig or
	// /etc/kubernetes/kubelet.conf); rotated client certificates are followed.
	Kubeconfig string `json:"kubeconfig"`
	// NodeName is the node's Node object; empty, the host name, as kubelet's default.
	NodeName string `json:"nodeName,omitempty"`
}

type Log struct {
	Format string `json:"format"`
	Level  string `json:"level"`
}

type Auth struct {
	Files           []string `json:"files"`
	NodeCredentials string   `json:"nodeCredentials"`
}

type Verification struct {
	Timeout     Duration `json:"timeout"`
	CacheTTL    Duration `json:"cacheTTL"`
	TrustedRoot string   `json:"trustedRoot,omitempty"`
	// MaxSignatures and MaxBytes bound what one image's verification fetches; beyond them the
	// pull is denied.
	MaxSignatures int   `json:"maxSignatures"`
	MaxBytes      int64 `json:"maxBytes"`
	// VerifyPresentImages checks images already in the runtime's store at ImageStatus and
	// CreateContainer; on unless set to false.
	VerifyPresentImages *bool `json:"verifyPresentImages,omitempty"`
}

// PresentImages reports whether images already in the runtime's store are checked.
func (v Verification) PresentImages() bool {
	return v.VerifyPresentImages == nil || *v.VerifyPresentImages
}

// Duration reads "30s", "24h" and the like. A value that is not a duration is kept as a problem
// for Validate to report with the field's path, together with every other problem; a decoding
// error would stop at the first one and could not say which field it was.
type Duration struct {
	time.Duration
	invalid error
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		d.invalid = fmt.Errorf("must be a string such as \"30s\", got %s", b)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.invalid = fmt.Errorf("invalid duration %q: use a number with a unit such as 30s, 5m or 24h", s)
		return nil
	}
	d.Duration, d.invalid = v, nil
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Default returns the configuration used for every field the file leaves out.
func Default() Config {
	return Config{
		APIVersion:          APIVersion,
		Kind:                Kind,
		Listen:              "unix:///run/pullgate/pullgate.sock",
		RuntimeEndpoint:     "unix:///run/containerd/containerd.sock",
		ContainerdNamespace: "k8s.io",
		RegistryConfigPath:  "/etc/containerd/certs.d",
		StateDir:            "/var/lib/pullgate",
		MetricsAddress:      "127.0.0.1:9750",
		ShutdownGracePeriod: Duration{Duration: 20 * time.Second},
		Log:                 Log{Format: "json", Level: "info"},
		Auth:                Auth{Files: []string{"/var/lib/kubelet/config.json"}, NodeCredentials: "fallback"},
		Verification:        Verification{Timeout: Duration{Duration: 30 * time.Second}, CacheTTL: Duration{Duration: 24 * time.Hour}, MaxSignatures: 32, MaxBytes: 4 << 20},
		DefaultAction:       string(verify.Deny),
	}
}

// Parse reads a configuration from YAML, on top of the defaults. Unknown fields are errors, so
// that a misspelt setting is never silently ignored.
func Parse(data []byte) (Config, error) {
	c := Default()
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("parse: %w", err)
	}
	return c, nil
}

// Load reads and validates the file at path.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate reports every problem at once, each with the path of its field.
func (c Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.APIVersion != APIVersion {
		add("apiVersion", "must be %q, got %q", APIVersion, c.APIVersion)
	}
	if c.Kind != Kind {
		add("kind", "must be %q, got %q", Kind, c.Kind)
	}
	if _, err := UnixPath(c.Listen); err != nil {
		add("listen", "%v", err)
	}
	if _, err := UnixPath(c.RuntimeEndpoint); err != nil {
		add("runtimeEndpoint", "%v", err)
	}
	if c.ContainerdNamespace == "" {
		add("containerdNamespace", "must be set; kubelet's images live in %q", "k8s.io")
	}
	if c.RegistryConfigPath != "" && !filepath.IsAbs(c.RegistryConfigPath) {
		add("registryConfigPath", "must be an absolute path, got %q", c.RegistryConfigPath)
	}
	if !filepath.IsAbs(c.StateDir) {
		add("stateDir", "must be an absolute path, got %q", c.StateDir)
	}
	if c.MetricsAddress != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddress); err != nil || port == "" {
			add("metricsAddress", "must be host:port such as 127.0.0.1:9750, or empty to disable, got %q", c.MetricsAddress)
		}
	}
	for _, d := range []struct {
		field string
		d     Duration
	}{{"shutdownGracePeriod", c.ShutdownGracePeriod}, {"verification.timeout", c.Verification.Timeout}, {"verification.cacheTTL", c.Verification.CacheTTL}} {
		if d.d.invalid != nil {
			add(d.field, "%v", d.d.invalid)
		}
	}
	if c.ShutdownGracePeriod.Duration < 0 {
		add("shutdownGracePeriod", "must not be negative")
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		add("log.format", "must be json or text, got %q", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	for i, f := range c.Auth.Files {
		if !filepath.IsAbs(f) {
			add(fmt.Sprintf("auth.files[%d]", i), "must be an absolute path, got %q", f)
		}
	}
	if c.Auth.NodeCredentials != "fallback" && c.Auth.NodeCredentials != "never" {
		add("auth.nodeCredentials", "must be fallback or never, got %q", c.Auth.NodeCredentials)
	}
	if c.Verification.Timeout.Duration <= 0 {
		add("verification.timeout", "must be positive, got %s", c.Verification.Timeout)
	}
	if c.Verification.CacheTTL.Duration < 0 {
		add("verification.cacheTTL", "must not be negative, got %s", c.Verification.CacheTTL)
	}
	if c.DefaultAction != string(verify.Deny) && c.DefaultAction != string(verify.Allow) {
		add("defaultAction", "must be deny or allow, got %q", c.DefaultAction)
	}
	if c.Cluster != nil {
		if !filepath.IsAbs(c.Cluster.Kubeconfig) {
			add("cluster.kubeconfig", "must be the absolute path of kubelet's kubeconfig, got %q", c.Cluster.Kubeconfig)
		}
		if n := c.Cluster.NodeName; n != "" {
			for _, msg := range validation.IsDNS1123Subdomain(n) {
				add("cluster.nodeName", "%q: %s", n, msg)
			}
		}
	}
	if c.Verification.MaxSignatures <= 0 {
		add("verification.maxSignatures", "must be positive, got %d", c.Verification.MaxSignatures)
	}
	if c.Verification.MaxBytes <= 0 {
		add("verification.maxBytes", "must be positive, got %d", c.Verification.MaxBytes)
	}
	if c.DefaultAction == string(verify.Deny) || c.DefaultAction == string(verify.Allow) {
		if _, err := c.Policy(); err != nil {
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = append(errs, j.Unwrap()...)
			} else {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// UnixPath returns the socket path of a "unix:///path" endpoint.
func UnixPath(endpoint string) (string, error) {
	p, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok || !filepath.IsAbs(p) {
		return "", fmt.Errorf("must be unix:///absolute/path.sock, got %q", endpoint)
	}
	return p, nil
}

// Settings are the bounds verification runs under.
func (c Config) Settings() verify.Settings {
	return verify.Settings{
		Timeout:       c.Verification.Timeout.Duration,
		CacheTTL:      c.Verification.CacheTTL.Duration,
		TrustedRoot:   c.Verification.TrustedRoot,
		MaxSignatures: c.Verification.MaxSignatures,
		MaxBytes:      c.Verification.MaxBytes,
	}
}

// Policy compiles the policies: keys, certificates and the trusted root are read, globs,
// regular expressions and CEL conditions compiled.
func (c Config) Policy() (*verify.Policy, error) {
	return verify.CompilePolicy(c.Policies, verify.Action(c.DefaultAction), c.Settings())
}
