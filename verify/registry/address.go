// Package registry is pullgate's HTTP stack for talking to registries: the rule for which
// addresses a registry may send pullgate to, a redirect follower that applies it and keeps
// credentials to their host, Docker token authentication (token realms on internal addresses
// included) with a token cache shared by every transport, and connection pools that enforce the
// rule again when they dial, whatever a name resolves to.
//
// The rule, for token realms and redirects alike:
//
//   - Never a link-local or metadata address (169.254.0.0/16, fe80::/10, the metadata services
//     clouds put elsewhere, IPv4-mapped and embedded forms of them), nor an unspecified or
//     multicast one, whatever the registry.
//   - Never a more internal class of address than the one that sent pullgate there. The classes,
//     from least to most internal: public; private (RFC 1918, 100.64.0.0/10, fc00::/7); loopback
//     (127.0.0.0/8, ::1), which is the node itself. So a public registry may not send pullgate to
//     a private or loopback address; a private one may send it to private and public addresses but
//     not to loopback: a registry on another machine has no business pointing the node at its own
//     services. A loopback registry (a node-local mirror) may send it anywhere but link-local.
//
// The class of the registry is that of the address pullgate is actually connected to when the
// registry answers (not of what its name resolved to at some other moment), and a chain of
// redirects is bounded by the least internal address along it. The registry's own endpoint may
// be any address but a forbidden one: it is what the image name or hosts.toml asks for.
package registry

import (
	"fmt"
	"net"
	"net/netip"
)

// Class is how internal an address is. Higher is more internal.
type Class int

const (
	// Public is any address not in another class.
	Public Class = iota
	// Private is a private network: RFC 1918, shared address space (RFC 6598), IPv6 unique local.
	Private
	// Loopback is the node itself.
	Loopback
	// Forbidden is never dialled: link-local, metadata, unspecified and multicast addresses.
	Forbidden
)

func (c Class) String() string {
	switch c {
	case Public:
		return "public"
	case Private:
		return "private"
	case Loopback:
		return "loopback"
	}
	return "forbidden"
}

var (
	// metadata services outside the link-local ranges. 169.254.169.254 (AWS, GCP, Azure, OCI,
	// OpenStack), 169.254.170.2 and 169.254.170.23 (ECS, EKS pod identity) and 169.254.0.23
	// (Tencent) are link-local already.
	metadata = prefixes(
		"100.100.100.200/32", // Alibaba Cloud
		"168.63.129.16/32",   // Azure WireServer
		"192.0.0.192/32",     // Oracle Cloud
		"fd00:ec2::/32",      // AWS: IMDS fd00:ec2::254, EKS pod identity fd00:ec2::23, DNS, NTP
		"fd20:ce::254/128",   // GCP
	)
	private = prefixes("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10")
	// embedding carry an IPv4 address in their last 32 bits: NAT64's well-known prefix
	// (RFC 6052) and IPv4-translated addresses (RFC 2765).
	embedding = prefixes("64:ff9b::/96", "::ffff:0:0:0/96")
)

func prefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

func inAny(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// classify returns ip's class and a name for it in messages, such as "link-local/metadata
// address". IPv6 forms that carry an IPv4 address (IPv4-mapped, -compatible, -translated, NAT64) are
// classified by that address; an invalid address (not known) is public, the least trusted.
func classify(ip netip.Addr) (Class, string) {
	ip = embedded(ip.WithZone(""))
	switch {
	case !ip.IsValid():
		return Public, "public address"
	case ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || inAny(metadata, ip):
		return Forbidden, "link-local/metadata address"
	case ip.IsUnspecified() || ip.Is4() && ip.As4()[0] == 0:
		return Forbidden, "unspecified address"
	case ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return Forbidden, "multicast or broadcast address"
	case ip.IsLoopback():
		return Loopback, "loopback address"
	case inAny(private, ip):
		return Private, "private address"
	}
	return Public, "public address"
}

// embedded returns the IPv4 address an IPv6 address stands for, or ip.
func embedded(ip netip.Addr) netip.Addr {
	if !ip.Is6() {
		return ip
	}
	if ip.Is4In6() {
		return ip.Unmap()
	}
	b := ip.As16()
	v4 := netip.AddrFrom4([4]byte(b[12:]))
	if inAny(embedding, ip) {
		return v4
	}
	// IPv4-compatible (::a.b.c.d, deprecated), but not :: and ::1 themselves.
	if [12]byte(b[:12]) == [12]byte{} && b[12]|b[13] != 0 {
		return v4
	}
	return ip
}

// refusal says why pullgate may not connect to ip when bound is the most internal class allowed
// (set by the address at boundBy), or returns "" when it may.
func refusal(ip netip.Addr, bound Class, boundBy netip.Addr) string {
	c, name := classify(ip)
	switch {
	case c == Forbidden:
		return name
	case c > bound:
		return fmt.Sprintf("%s, more internal than %s (%s)", name, boundBy, bound)
	}
	return ""
}

// literal returns the IP address host (with or without a port and brackets) names, if it is an
// IP literal.
func literal(host string) (netip.Addr, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	ip, err := netip.ParseAddr(host)
	return ip, err == nil
}

// RefusedError is a token realm, a redirect or a connection that pullgate refuses by the rule of
// this package. It is a definite answer about the registry, not trouble that may pass.
type RefusedError struct {
	// What was refused: "redirect", "token realm", or "connection" to the registry itself.
	What string
	// From is the host that sent pullgate there; empty for the registry itself.
	From string
	// To is where it was sent: host[:port], and the address a name resolved to.
	To string
	// Reason says why, e.g. "link-local/metadata address".
	Reason string
}

func (e *RefusedError) Error() string {
	if e.From == "" {
		return fmt.Sprintf("refusing %s to %s: %s", e.What, e.To, e.Reason)
	}
	return fmt.Sprintf("refusing %s from %s to %s: %s", e.What, e.From, e.To, e.Reason)
}
