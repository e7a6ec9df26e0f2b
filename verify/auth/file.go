package auth

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// entry is one credential from a file and the key it was written under.
type entry struct {
	pat  pattern
	cred Credential
}

// fileEntry is a value in "auths" (docker config.json, containers auth.json, dockerconfigjson
// secrets) or at the top level of a legacy .dockercfg file.
type fileEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// parseFile reads the credentials in data, in the order the file lists them. The shape is
// detected from the content: a top-level "auths" (or docker's credsStore/credHelpers, whose
// helpers kubelet does not run) means config.json; otherwise the object is a legacy .dockercfg.
// A bad entry does not spoil the others: the good ones are returned with an error for each bad
// one. Errors name keys and JSON fields, never values.
func parseFile(data []byte) ([]entry, []error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, []error{errors.New("empty file, want a JSON object")}
	}
	top, err := orderedObject(data)
	if err != nil {
		return nil, []error{err}
	}
	var auths []member
	configShape := false
	for _, kv := range top {
		switch kv.key {
		case "auths":
			if auths, err = orderedObject(kv.value); err != nil {
				return nil, []error{fmt.Errorf(`"auths": %w`, err)}
			}
			configShape = true
		case "credsStore", "credHelpers":
			configShape = true
		}
	}
	entries := top
	if configShape {
		entries = auths
	}

	var out []entry
	var errs []error
	for _, kv := range entries {
		e, err := parseEntry(kv.key, kv.value)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %q: %w", kv.key, err))
			continue
		}
		if !e.cred.IsZero() {
			out = append(out, e)
		}
	}
	return out, errs
}

func parseEntry(key string, raw json.RawMessage) (entry, error) {
	pat, err := parsePattern(key)
	if err != nil {
		return entry{}, err
	}
	var fe fileEntry
	if err := json.Unmarshal(raw, &fe); err != nil {
		return entry{}, jsonError(err)
	}
	c := Credential{
		Username:      fe.Username,
		Password:      fe.Password,
		IdentityToken: fe.IdentityToken,
		RegistryToken: fe.RegistryToken,
	}
	// As in kubelet and docker, "auth" wins over "username" and "password".
	if fe.Auth != "" {
		if c.Username, c.Password, err = decodeAuth(fe.Auth); err != nil {
			return entry{}, fmt.Errorf(`"auth": %w`, err)
		}
	}
	return entry{pat: pat, cred: c}, nil
}

// decodeAuth decodes base64("user:password"), padded or not, splitting on the first ':'.
// Its errors never include the value or what it decoded to.
func decodeAuth(s string) (user, password string, err error) {
	s = strings.TrimSpace(s)
	var b []byte
	if strings.HasSuffix(s, "=") {
		b, err = base64.StdEncoding.DecodeString(s)
	} else {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil {
		return "", "", errors.New("not valid base64")
	}
	user, password, ok := strings.Cut(string(b), ":")
	if !ok {
		return "", "", errors.New("must be base64(username:password), has no ':'")
	}
	return user, password, nil
}

type member struct {
	key   string
	value json.RawMessage
}

// orderedObject decodes a JSON object keeping its members in document order, so that the order
// of credentials under keys that normalise alike does not depend on map iteration.
func orderedObject(data []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, jsonError(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	members := []member{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, jsonError(err)
		}
		var m member
		m.key = tok.(string) // object keys are always strings once Token succeeds
		if err := dec.Decode(&m.value); err != nil {
			return nil, fmt.Errorf("key %q: %w", m.key, jsonError(err))
		}
		members = append(members, m)
	}
	if _, err := dec.Token(); err != nil {
		return nil, jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON: data after the top-level object")
	}
	return members, nil
}

// jsonError keeps JSON errors from quoting file content: a syntax error names an offending
// character, which may belong to a secret.
func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Errorf("field %q: want %s, have a JSON %s", typ.Field, typ.Type, typ.Value)
		}
		return fmt.Errorf("want a JSON object, have a JSON %s", typ.Value)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("invalid JSON: unexpected end of input")
	}
	return errors.New("invalid JSON")
}
