package config

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// fuzzKey is a public key for inline key authorities in the seeds.
const fuzzKey = `-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0SvdT6G0DJ1jzAj+tK0iULd8Qv8s
n9idh7fdvRyCUsGNxXvt72cyOgOZFDhv9AixNjUulmv/rp1xluzSPFqfmA==
-----END PUBLIC KEY-----
`

// FuzzConfig checks the reading of pullgate's configuration file:
//   - Parse and Validate never panic;
//   - a configuration Validate accepts can be written out (as `pullgate check-config` or an
//     installer would) and read again to an equal configuration, which Validate accepts too;
//   - Validate is deterministic.
//
// Configurations that name key, certificate or trusted-root files are skipped unless the file
// does not exist: the fuzzer must not read the machine's files.
func FuzzConfig(f *testing.F) {
	inlineKey, _ := json.Marshal(fuzzKey)
	for _, s := range []string{
		designSample, "", "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\n",
		// TestParseDefaults
		"log: {level: debug}\nverification: {cacheTTL: 1h}\n",
		"auth: {files: [/root/.docker/config.json, /etc/containers/auth.json]}\n",
		"shutdownGracePeriod: 1m30s\nverification: {timeout: 250ms}\n",
		"metricsAddress: \"\"\nregistryConfigPath: \"\"\n",
		// TestParseErrors
		"listenAddress: /run/x.sock\n", "log: {lvl: debug}\n", "verification: {timout: 5s}\n", "listen: [a, b]\n", "listen: [\n",
		// TestValidateReportsEveryProblem, TestValidateBadDurationsTogether
		"apiVersion: pullgate.io/v1\nlisten: /run/pullgate/pullgate.sock\nlog: {level: verbose}\nauth: {nodeCredentials: always}\nverification: {timeout: 0s}\n",
		"shutdownGracePeriod: 1y\nverification: {timeout: fast, cacheTTL: 7}\nlog: {level: loud}\n",
		// TestValidateFields
		"kind: KubeletConfiguration", "listen: tcp://127.0.0.1:1234", "listen: unix://run/pullgate.sock",
		"runtimeEndpoint: /run/containerd/containerd.sock", `containerdNamespace: ""`, "registryConfigPath: certs.d",
		"stateDir: var/lib/pullgate", `stateDir: ""`, "metricsAddress: 127.0.0.1", "metricsAddress: '127.0.0.1:'",
		"metricsAddress: ':9750'", "shutdownGracePeriod: -1s", "shutdownGracePeriod: 0s", "shutdownGracePeriod: soon",
		"log: {format: xml}", "log: {format: text, level: debug}", "log: {level: trace}",
		"auth: {files: [/var/lib/kubelet/config.json, config.json]}", "auth: {files: []}", "auth: {files: null}",
		"auth: {nodeCredentials: never}", "auth: {nodeCredentials: sometimes}", "verification: {timeout: 0s}",
		"verification: {timeout: -5s}", "verification: {timeout: 30}", "verification: {timeout: 1d}",
		"verification: {cacheTTL: -1h}", "verification: {cacheTTL: 0s}", "verification: {cacheTTL: forever}",
		"defaultAction: allow", "defaultAction: warn", "verification: {maxSignatures: 0}", "policies: []",
		"verification: {verifyPresentImages: false, maxBytes: 9223372036854775807}",
		"policies:\n- name: base-images\n  images: [\"docker.io/library/*\"]\n  mode: skip\n",
		"policies:\n- name: apps\n  images: [\"registry.example.com/**\"]\n  mode: enforce\n",
		"policies:\n- name: apps\n  images: [\"registry.example.com/**\"]\n  mode: enforce\n  authorities:\n  - name: k\n    key: {file: /nonexistent.pub}\n    ignoreTransparencyLog: true\n",
		// Policies that compile: an inline key, keyless identities, attestations with conditions.
		"policies:\n- name: apps\n  images: [\"registry.example.com/apps/**\", \"*.example.com/team/*\"]\n  namespaces: [\"prod-*\"]\n  mode: enforce\n  bindRepository: true\n  signedLevel: platform\n  authorities:\n  - name: release\n    key: {data: " + string(inlineKey) + "}\n    ignoreTransparencyLog: true\n  attestations:\n  - name: no-critical\n    predicateType: https://cosign.sigstore.dev/attestation/vuln/v1\n    condition: predicate.scanner.result.summary.CRITICAL == 0\n- name: rest\n  images: [\"**\"]\n  mode: warn\n  authorities:\n  - name: release\n    key: {data: " + string(inlineKey) + "}\n    ignoreTransparencyLog: true\n",
		"policies:\n- name: keyless\n  images: [\"ghcr.io/org/*\"]\n  mode: enforce\n  authorities:\n  - name: ci\n    keyless: {issuer: https://token.actions.githubusercontent.com, subjectRegExp: '^https://github.com/org/.*$'}\n",
		"policies:\n- name: ca\n  images: [\"registry.example.com/**\"]\n  mode: enforce\n  authorities:\n  - name: corp\n    certificate: {roots: /nonexistent/roots.pem, subject: builder@example.com}\n    ignoreTransparencyLog: true\n",
		"verification: {trustedRoot: /nonexistent/trusted_root.json}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if readsFiles(c) {
			t.Skip("names files to read")
		}
		verr := c.Validate()
		if again := c.Validate(); (verr == nil) != (again == nil) || verr != nil && verr.Error() != again.Error() {
			t.Fatalf("Validate is not deterministic: %v, then %v", verr, again)
		}
		if verr != nil {
			return
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("a valid configuration does not encode: %v\n%s", err, data)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("a valid configuration, written out, does not parse: %v\nread:\n%s\nwritten:\n%s", err, data, out)
		}
		if want, got := mustJSON(t, c), mustJSON(t, back); !bytes.Equal(want, got) {
			t.Fatalf("a valid configuration, written out, reads as another:\nread:\n%s\nwritten:\n%s\nwant %s\ngot  %s", data, out, want, got)
		}
		if back.Verification.PresentImages() != c.Verification.PresentImages() {
			t.Fatalf("verifyPresentImages changed in the round trip")
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("a valid configuration, written out and read again, is invalid: %v\nwritten:\n%s", err, out)
		}
	})
}

func mustJSON(t *testing.T, c Config) []byte {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readsFiles reports whether Validate would read a file that may exist: policies' keys and
// certificate authorities, and the trusted root. Names under /nonexistent are let through.
func readsFiles(c Config) bool {
	var files []string
	files = append(files, c.Verification.TrustedRoot)
	for _, p := range c.Policies {
		for _, a := range p.Authorities {
			if a.Key != nil {
				files = append(files, a.Key.File)
			}
			if a.Certificate != nil {
				files = append(files, a.Certificate.Roots, a.Certificate.Intermediates)
			}
		}
	}
	for _, f := range files {
		if f != "" && (!strings.HasPrefix(f, "/nonexistent") || strings.Contains(f, "..") || strings.ContainsRune(f, 0)) {
			return true
		}
	}
	return false
}
