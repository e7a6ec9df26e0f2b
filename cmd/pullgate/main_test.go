package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"serve", "verify", "audit", "check-config", "install", "uninstall", "version"} {
		for _, tc := range []struct {
			flag     string
			wantCode int
		}{{"-h", 0}, {"--help", 0}, {"--no-such-flag", 2}} {
			t.Run(cmd+" "+tc.flag, func(t *testing.T) {
				t.Parallel()
				var stdout, stderr bytes.Buffer
				code := run([]string{cmd, tc.flag}, &stdout, &stderr)
				if code != tc.wantCode {
					t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.wantCode, &stderr)
				}
				// Help asked for goes to stdout, help for a mistake to stderr.
				help, other := &stdout, &stderr
				if tc.wantCode != 0 {
					help, other = &stderr, &stdout
				}
				if want := "usage: pullgate " + cmd; !strings.HasPrefix(help.String(), want) {
					t.Errorf("got %q, want the usage %q...", help, want)
				}
				if tc.wantCode == 0 && other.Len() > 0 {
					t.Errorf("also wrote %q", other)
				}
				if tc.wantCode != 0 && !strings.Contains(help.String(), "flag provided but not defined: -no-such-flag") {
					t.Errorf("stderr %q does not name the mistake", help)
				}
			})
		}
	}
}
