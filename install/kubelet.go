package install

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

type field struct{ key, value string }

// setFields sets top-level string fields of a block-style KubeletConfiguration by rewriting
// only their lines (or appending them), so that comments, order and formatting of everything
// else stay as the administrator or kubeadm wrote them. The result must decode to the original
// document with exactly those fields changed; a file this cannot edit safely is refused.
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
		line := f.key + ": " + f.value + "\n"
		i := indexKey(lines, f.key)
		if i < 0 {
			if n := len(lines); n > 0 && !strings.HasSuffix(lines[n-1], "\n") {
				lines[n-1] += "\n"
			}
			lines = append(lines, line)
			continue
		}
		// The value may continue on indented lines.
		end := i + 1
		for end < len(lines) && strings.HasPrefix(lines[end], " ") {
			end++
		}
		lines = append(lines[:i], append([]string{line}, lines[end:]...)...)
	}
	out := []byte(strings.Join(lines, ""))
	after, err := decodeMap(out)
	if err != nil {
		return nil, fmt.Errorf("edited file does not parse: %w", err)
	}
	want := maps.Clone(before)
	for _, f := range fields {
		want[f.key] = f.value
	}
	if !reflect.DeepEqual(after, want) {
		return nil, fmt.Errorf("cannot edit it line by line (flow style or several documents?); set %s by hand", fields[0].key)
	}
	return out, nil
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

// HTTPHealth returns a check that polls url (kubelet's healthz) until it answers 200 or ctx ends.
func HTTPHealth(url string) func(context.Context) error {
	return func(ctx context.Context) error {
		client := &http.Client{Timeout: 2 * time.Second}
		var last error
		for {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
				err = fmt.Errorf("%s: %s", url, resp.Status)
			}
			last = err
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}
