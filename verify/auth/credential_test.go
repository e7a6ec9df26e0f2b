package auth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

const (
	secretPassword = "s3cr3t-p4ssw0rd"
	secretIdentity = "s3cr3t-identity-token"
	secretRegistry = "s3cr3t-registry-token"
)

func TestCredentialNeverPrintsSecrets(t *testing.T) {
	t.Parallel()
	full := Credential{
		Username:      "alice",
		Password:      secretPassword,
		IdentityToken: secretIdentity,
		RegistryToken: secretRegistry,
	}
	type holder struct{ Cred Credential }
	slogJSON := func(c Credential) string {
		var buf bytes.Buffer
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("pull", "cred", c)
		return buf.String()
	}
	slogText := func(c Credential) string {
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("pull", "cred", c)
		return buf.String()
	}
	jsonMarshal := func(c Credential) string {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false) // to read "<redacted>" as is
		if err := enc.Encode(holder{c}); err != nil {
			t.Fatalf("encode: %v", err)
		}
		return buf.String()
	}
	tests := []struct {
		name   string
		format func(Credential) string
	}{
		{"%v", func(c Credential) string { return fmt.Sprintf("%v", c) }},
		{"%+v", func(c Credential) string { return fmt.Sprintf("%+v", c) }},
		{"%#v", func(c Credential) string { return fmt.Sprintf("%#v", c) }},
		{"%s", func(c Credential) string { return fmt.Sprintf("%s", c) }},
		{"%q", func(c Credential) string { return fmt.Sprintf("%q", c) }},
		{"%x", func(c Credential) string { return fmt.Sprintf("%x", c) }},
		{"%d", func(c Credential) string { return fmt.Sprintf("%d", c) }},
		{"pointer %+v", func(c Credential) string { return fmt.Sprintf("%+v", &c) }},
		{"slice %+v", func(c Credential) string { return fmt.Sprintf("%+v", []Credential{c}) }},
		{"struct field %+v", func(c Credential) string { return fmt.Sprintf("%+v", holder{c}) }},
		{"struct field %#v", func(c Credential) string { return fmt.Sprintf("%#v", holder{c}) }},
		{"Sprint", func(c Credential) string { return fmt.Sprint(c) }},
		{"slog JSON", slogJSON},
		{"slog text", slogText},
		{"json.Marshal", jsonMarshal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.format(full)
			for _, secret := range []string{secretPassword, secretIdentity, secretRegistry} {
				if strings.Contains(got, secret) {
					t.Errorf("output reveals a secret: %s", got)
				}
			}
			if !strings.Contains(got, "alice") {
				t.Errorf("output lacks the user name: %s", got)
			}
			if !strings.Contains(got, redacted) {
				t.Errorf("output does not say secrets are redacted: %s", got)
			}
		})
	}
}

func TestCredentialString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cred Credential
		want string
	}{
		{"zero", Credential{}, "anonymous"},
		{"basic", Credential{Username: "alice", Password: "pw"}, `{username: "alice", password: <redacted>}`},
		{"identity token", Credential{Username: "<token>", IdentityToken: "t"}, `{username: "<token>", identitytoken: <redacted>}`},
		{"registry token", Credential{RegistryToken: "t"}, `{registrytoken: <redacted>}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.cred.String(); got != tt.want {
				t.Errorf("String() = %s, want %s", got, tt.want)
			}
			if got, want := fmt.Sprintf("%#v", tt.cred), "auth.Credential"+tt.want; got != want {
				t.Errorf("%%#v = %s, want %s", got, want)
			}
		})
	}
}

func TestCredentialLogValueJSON(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("pull", "cred", Credential{Username: "alice", Password: secretPassword})
	var line struct {
		Cred map[string]string `json:"cred"`
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("decode log line %s: %v", buf.String(), err)
	}
	want := map[string]string{"username": "alice", "password": redacted}
	if fmt.Sprint(line.Cred) != fmt.Sprint(want) {
		t.Errorf("logged cred = %v, want %v", line.Cred, want)
	}
}
