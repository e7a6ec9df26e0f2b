package install

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/http"
	"path"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

type field struct {
	key, value string
	remove     bool // drop the field instead
}

// setFields sets (or removes) top-level string fields of a block-style KubeletConfiguration by
// rewriting only their lines (or appending them), so that comments, order and formatting of
// everything else stay as the administrator or kubeadm wrote them. The result must decode to
// the original document with exactly those fields changed; a file this cannot edit safely is
// refused.
func setFields(data []byte, fields []field) ([]byte, error) {
	before, err := decodeMap(data)
	if err != nil {
		return nil, err
	}
	if before["kind"] != "KubeletConfiguration" {
		return nil, fmt.Errorf("not a KubeletConfiguration (kind %v)", before["kind"])
	}
	lines := strings.SplitAfter(string(data), "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for _, f := range fields {
		var repl []string
		if !f.remove {
			repl = []string{f.key + ": " + f.value + "\n"}
		}
		i := indexKey(lines, f.key)
		if i < 0 {
			if n := len(lines); n > 0 && !strings.HasSuffix(lines[n-1], "\n") {
				lines[n-1] += "\n"
			}
			lines = append(lines, repl...)
			continue
		}
		// The value may continue on indented lines.
		end := i + 1
		for end < len(lines) && strings.HasPrefix(lines[end], " ") {
			end++
		}
		lines = append(lines[:i], append(repl, lines[end:]...)...)
	}
	out := []byte(strings.Join(lines, ""))
	after, err := decodeMap(out)
	if err != nil {
		return nil, fmt.Errorf("edited file does not parse: %w", err)
	}
	want := maps.Clone(before)
	for _, f := range fields {
		if f.remove {
			delete(want, f.key)
		} else {
			want[f.key] = f.value
		}
	}
	if !reflect.DeepEqual(after, want) {
		return nil, fmt.Errorf("cannot edit it line by line (flow style or several documents?); set %s by hand", fields[0].key)
	}
	return out, nil
}

// endpointKeys are the fields install may point at pullgate.
var endpointKeys = []string{"imageServiceEndpoint", "containerRuntimeEndpoint"}

// revert returns kubelet's configuration as uninstall leaves it: the original exactly when
// nothing but install's own edit changed it since, and otherwise the current file with only the
// fields that still point at pullgate set back to their original values, so that later changes
// (a kubeadm upgrade rewriting the file) stay.
func revert(original, current []byte) (data []byte, exact bool, err error) {
	image := field{key: endpointKeys[0], value: Endpoint}
	for _, edit := range [][]field{{image}, {image, {key: endpointKeys[1], value: Endpoint}}} {
		if out, err := setFields(original, edit); err == nil && bytes.Equal(out, current) {
			return original, true, nil
		}
	}
	orig, err := decodeMap(original)
	if err != nil {
		return nil, false, fmt.Errorf("original: %w", err)
	}
	cur, err := decodeMap(current)
	if err != nil {
		return nil, false, err
	}
	var fields []field
	for _, k := range endpointKeys {
		if !isPullgate(cur[k]) {
			continue
		}
		if v, ok := orig[k].(string); ok {
			fields = append(fields, field{key: k, value: v})
		} else {
			fields = append(fields, field{key: k, remove: true})
		}
	}
	if len(fields) == 0 {
		return current, false, nil
	}
	out, err := setFields(current, fields)
	return out, false, err
}

// usesPullgate reports whether a kubelet configuration points kubelet at pullgate.
func usesPullgate(data []byte) bool {
	return len(pullgateFields(data)) > 0
}

// pullgateFields are the endpoint fields of a kubelet configuration that lead to pullgate's
// socket, however they are spelled.
func pullgateFields(data []byte) []string {
	m, err := decodeMap(data)
	if err != nil {
		return nil
	}
	var keys []string
	for _, k := range endpointKeys {
		if isPullgate(m[k]) {
			keys = append(keys, k)
		}
	}
	return keys
}

// isPullgate reports whether an endpoint as kubelet reads it leads to pullgate's socket. kubelet
// takes a bare path as a unix socket, and /var/run is /run on every systemd host.
func isPullgate(endpoint any) bool {
	s, ok := endpoint.(string)
	if !ok {
		return false
	}
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "unix://"); ok {
		s = rest
	} else if strings.Contains(s, "://") {
		return false
	}
	s = path.Clean(s)
	if rest, ok := strings.CutPrefix(s, "/var/run/"); ok {
		s = "/run/" + rest
	}
	return s == Socket
}

func indexKey(lines []string, key string) int {
	for i, l := range lines {
		if strings.HasPrefix(l, key+":") {
			return i
		}
	}
	return -1
}

func decodeMap(data []byte) (map[string]any, error) {
	var m map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if m == nil {
		return nil, fmt.Errorf("empty document")
	}
	return m, nil
}

// DefaultSettle is how long kubelet's healthz must answer 200 without a break to count as
// healthy: a kubelet that crashes on its new configuration may answer once before it does.
const DefaultSettle = 10 * time.Second

// HTTPHealth returns a check that polls url (kubelet's healthz) until it has answered 200
// continuously for settle, or ctx ends. Any other answer starts the settle period again.
func HTTPHealth(url string, settle time.Duration) func(context.Context) error {
	interval := min(500*time.Millisecond, max(settle/4, 10*time.Millisecond))
	return func(ctx context.Context) error {
		client := &http.Client{Timeout: 2 * time.Second}
		var since time.Time // of the current run of 200s
		last := fmt.Errorf("%s: no answer yet", url)
		for {
			err := getOK(ctx, client, url)
			switch {
			case ctx.Err() != nil:
				// The deadline cut the request short: the last answer is still the one to report.
			case err != nil:
				since, last = time.Time{}, err
			case since.IsZero():
				since = time.Now()
			}
			if !since.IsZero() && time.Since(since) >= settle {
				return nil
			}
			select {
			case <-ctx.Done():
				if !since.IsZero() {
					return fmt.Errorf("%w: healthy for %s, not yet %s without a break (last failure: %v)", ctx.Err(), time.Since(since).Round(time.Millisecond), settle, last)
				}
				return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
			case <-time.After(interval):
			}
		}
	}
}

func getOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
