package registry

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// fakeDNS is a DNS server on loopback that answers A queries for the names it was given and
// nothing else, so that tests can make names resolve where they like.
type fakeDNS struct {
	conn net.PacketConn
	mu   sync.Mutex
	a    map[string]netip.Addr // fully qualified, lower case: "metadata.test."
}

func startDNS(t *testing.T) *fakeDNS {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDNS{conn: conn, a: map[string]netip.Addr{}}
	t.Cleanup(func() { conn.Close() })
	go d.serve()
	return d
}

// set makes name resolve to ip (an IPv4 address).
func (d *fakeDNS) set(name string, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.a[strings.ToLower(name)+"."] = netip.MustParseAddr(ip)
}

// resolver is a resolver that asks only d.
func (d *fakeDNS) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "udp", d.conn.LocalAddr().String())
	}}
}

func (d *fakeDNS) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := d.answer(buf[:n]); resp != nil {
			_, _ = d.conn.WriteTo(resp, from)
		}
	}
}

// answer builds the response to one query: the header, the question, and an A record when the
// question is an A query for a known name; NXDOMAIN for an unknown one.
func (d *fakeDNS) answer(q []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	// The question's name: labels up to the zero byte, then type and class.
	i := 12
	var labels []string
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if i+1+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	if i+5 > len(q) {
		return nil
	}
	question := q[12 : i+5]
	qtype := binary.BigEndian.Uint16(q[i+1:])
	name := strings.ToLower(strings.Join(labels, ".")) + "."

	d.mu.Lock()
	ip, known := d.a[name]
	d.mu.Unlock()
	resp := make([]byte, 12, 64)
	copy(resp, q[:2])       // the query's ID
	flags := uint16(0x8180) // a response, recursion desired and available, no error
	if !known {
		flags |= 3 // NXDOMAIN
	}
	binary.BigEndian.PutUint16(resp[2:], flags)
	binary.BigEndian.PutUint16(resp[4:], 1) // one question
	resp = append(resp, question...)
	if known && qtype == 1 {
		binary.BigEndian.PutUint16(resp[6:], 1)           // one answer
		resp = append(resp, 0xc0, 12)                     // the name: a pointer to the question's
		resp = append(resp, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4) // A, IN, TTL 0, four bytes
		a4 := ip.As4()
		resp = append(resp, a4[:]...)
	}
	return resp
}

func TestFakeDNS(t *testing.T) {
	t.Parallel()
	d := startDNS(t)
	d.set("metadata.test", "169.254.169.254")
	addrs, err := d.resolver().LookupNetIP(t.Context(), "ip4", "metadata.test")
	if err != nil || len(addrs) != 1 || addrs[0].String() != "169.254.169.254" {
		t.Fatalf("LookupNetIP(metadata.test) = %v, %v", addrs, err)
	}
	if _, err := d.resolver().LookupNetIP(t.Context(), "ip4", "unknown.test"); err == nil {
		t.Error("an unknown name resolved")
	}
}
