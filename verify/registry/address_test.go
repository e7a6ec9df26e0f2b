package registry

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ip   string
		want Class
	}{
		// Public.
		{"8.8.8.8", Public},
		{"203.0.113.7", Public},
		{"2001:db8::1", Public},
		{"100.63.255.255", Public}, // just below the shared address space
		// Private.
		{"10.0.0.5", Private},
		{"172.16.0.1", Private},
		{"172.31.255.255", Private},
		{"192.168.1.1", Private},
		{"100.64.0.1", Private},
		{"fd12:3456::1", Private},
		{"::ffff:10.0.0.6", Private},
		// Loopback.
		{"127.0.0.1", Loopback},
		{"127.0.0.2", Loopback},
		{"127.255.255.254", Loopback},
		{"::1", Loopback},
		{"::ffff:127.0.0.1", Loopback},
		// Link-local and metadata, in every form.
		{"169.254.169.254", Forbidden},
		{"169.254.0.1", Forbidden},
		{"169.254.170.2", Forbidden},
		{"fe80::1", Forbidden},
		{"fe80::1%eth0", Forbidden},
		{"::ffff:169.254.169.254", Forbidden},   // IPv4-mapped
		{"::169.254.169.254", Forbidden},        // IPv4-compatible
		{"::ffff:0:169.254.169.254", Forbidden}, // IPv4-translated
		{"64:ff9b::169.254.169.254", Forbidden}, // NAT64
		{"64:ff9b::a9fe:a9fe", Forbidden},
		{"100.100.100.200", Forbidden},
		{"::ffff:100.100.100.200", Forbidden},
		{"168.63.129.16", Forbidden},
		{"192.0.0.192", Forbidden},
		{"fd00:ec2::254", Forbidden},
		{"fd00:ec2::23", Forbidden},
		{"fd20:ce::254", Forbidden},
		// Nowhere a registry could be.
		{"0.0.0.0", Forbidden},
		{"0.1.2.3", Forbidden},
		{"::", Forbidden},
		{"224.0.0.1", Forbidden},
		{"239.1.2.3", Forbidden},
		{"ff02::1", Forbidden},
		{"255.255.255.255", Forbidden},
	}
	for _, tt := range tests {
		if got, name := classify(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("classify(%s) = %s (%s), want %s", tt.ip, got, name, tt.want)
		}
	}
	if got, _ := classify(netip.Addr{}); got != Public {
		t.Errorf("an unknown address is %s, want public, the least trusted", got)
	}
}

// TestRule is the whole rule: where a registry of each class may send pullgate.
func TestRule(t *testing.T) {
	t.Parallel()
	by := map[Class]netip.Addr{Public: netip.MustParseAddr("203.0.113.5"), Private: netip.MustParseAddr("10.0.0.5"), Loopback: netip.MustParseAddr("127.0.0.1")}
	tests := []struct {
		bound Class
		to    string
		want  string // "" for allowed
	}{
		{Public, "198.51.100.1", ""},
		{Public, "10.0.0.6", "private address, more internal than 203.0.113.5 (public)"},
		{Public, "127.0.0.1", "loopback address, more internal than 203.0.113.5 (public)"},
		{Public, "::ffff:192.168.0.1", "private address, more internal than 203.0.113.5 (public)"},
		{Public, "169.254.169.254", "link-local/metadata address"},
		{Private, "10.0.0.6", ""},
		{Private, "fd00::6", ""},
		{Private, "198.51.100.1", ""},
		{Private, "127.0.0.1", "loopback address, more internal than 10.0.0.5 (private)"},
		{Private, "169.254.169.254", "link-local/metadata address"},
		{Private, "::ffff:169.254.169.254", "link-local/metadata address"},
		{Loopback, "127.0.0.2", ""},
		{Loopback, "10.0.0.6", ""},
		{Loopback, "198.51.100.1", ""},
		{Loopback, "169.254.0.1", "link-local/metadata address"},
		{Loopback, "fe80::1", "link-local/metadata address"},
		{Loopback, "100.100.100.200", "link-local/metadata address"},
		{Loopback, "fd00:ec2::254", "link-local/metadata address"},
		{Loopback, "0.0.0.0", "unspecified address"},
	}
	for _, tt := range tests {
		if got := refusal(netip.MustParseAddr(tt.to), tt.bound, by[tt.bound]); got != tt.want {
			t.Errorf("from %s (%s) to %s: %q, want %q", by[tt.bound], tt.bound, tt.to, got, tt.want)
		}
	}
}

func TestLiteral(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host string
		want string // "" when host is a name
	}{
		{"169.254.169.254", "169.254.169.254"},
		{"169.254.169.254:80", "169.254.169.254"},
		{"[fe80::1]:443", "fe80::1"},
		{"[::ffff:169.254.169.254]", "::ffff:169.254.169.254"},
		{"::1", "::1"},
		{"registry.example.com:5000", ""},
		{"localhost", ""},
	}
	for _, tt := range tests {
		ip, ok := literal(tt.host)
		if got := ""; ok {
			got = ip.String()
			if got != tt.want {
				t.Errorf("literal(%s) = %s, want %q", tt.host, got, tt.want)
			}
		} else if tt.want != "" {
			t.Errorf("literal(%s) is not an address, want %s", tt.host, tt.want)
		}
	}
}

func TestRefusedErrorMessage(t *testing.T) {
	t.Parallel()
	err := error(&RefusedError{What: "redirect", From: "10.0.0.5:5000", To: "169.254.169.254", Reason: "link-local/metadata address"})
	if want := "refusing redirect from 10.0.0.5:5000 to 169.254.169.254: link-local/metadata address"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	err = &RefusedError{What: "connection", To: "169.254.169.254:80", Reason: "link-local/metadata address"}
	if want := "refusing connection to 169.254.169.254:80: link-local/metadata address"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

// TestCheckDial is the check at dial time, given the address a name resolved to.
func TestCheckDial(t *testing.T) {
	t.Parallel()
	realm := withHop(context.Background(), hop{what: "token realm", from: "10.0.0.5:5000", to: "auth.example:443", bound: Private, boundBy: netip.MustParseAddr("10.0.0.5")})
	tests := []struct {
		name    string
		ctx     context.Context
		bound   Class
		address string
		want    string // "" for allowed
	}{
		{"registry on loopback", context.Background(), Loopback, "127.0.0.1:5000", ""},
		{"registry on a metadata address", context.Background(), Loopback, "169.254.169.254:80", "refusing connection to 169.254.169.254:80: link-local/metadata address"},
		{"registry on a mapped metadata address", context.Background(), Loopback, "[::ffff:169.254.169.254]:80", "refusing connection to [::ffff:169.254.169.254]:80: link-local/metadata address"},
		{"realm on the private network", realm, Private, "10.0.0.7:443", ""},
		{"realm that resolves to loopback", realm, Private, "127.0.0.1:443", "refusing token realm from 10.0.0.5:5000 to auth.example:443 (127.0.0.1): loopback address, more internal than 10.0.0.5 (private)"},
		{"realm that resolves to metadata", realm, Private, "169.254.169.254:443", "refusing token realm from 10.0.0.5:5000 to auth.example:443 (169.254.169.254): link-local/metadata address"},
	}
	for _, tt := range tests {
		err := checkDial(tt.ctx, tt.bound, tt.address)
		var got string
		if err != nil {
			got = err.Error()
			var re *RefusedError
			if !errors.As(err, &re) {
				t.Errorf("%s: %v is not a *RefusedError", tt.name, err)
			}
		}
		if got != tt.want {
			t.Errorf("%s: checkDial(%s) = %q, want %q", tt.name, tt.address, got, tt.want)
		}
	}
}
