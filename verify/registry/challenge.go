package registry

import (
	"sort"
	"strings"
)

// challenge is one authentication challenge of a WWW-Authenticate header (RFC 9110 section 11):
// a scheme and its parameters, names lowercased. A token68 (as in "Negotiate YII=") is not
// kept: no scheme pullgate answers uses one.
type challenge struct {
	scheme string
	params map[string]string
}

// Bounds on what one response's challenges may hold; anything beyond is ignored.
const (
	maxChallenges = 16
	maxParams     = 32
)

// parseChallenges returns the challenges in the WWW-Authenticate header values, in order. Each
// value may hold several challenges separated by commas. Parsing a value stops at a malformed
// challenge, which is dropped, keeping the challenges before it; a parameter named twice keeps
// its first value.
func parseChallenges(values []string) []challenge {
	var cs []challenge
	for _, v := range values {
		p := parser{s: v}
		for len(cs) < maxChallenges {
			p.skipListSeparators()
			if p.done() {
				break
			}
			c, ok := p.challenge()
			if !ok {
				break
			}
			cs = append(cs, c)
		}
	}
	return cs
}

type parser struct {
	s string
	i int
}

func (p *parser) done() bool { return p.i >= len(p.s) }

func (p *parser) peek() byte {
	if p.done() {
		return 0
	}
	return p.s[p.i]
}

func (p *parser) skipSpace() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *parser) skipListSeparators() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == ',') {
		p.i++
	}
}

func (p *parser) token() string {
	start := p.i
	for !p.done() && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// challenge parses `scheme [ 1*SP ( token68 / #auth-param ) ]`, and reports whether it is
// well-formed: it ends at the end of the value, or before the next challenge.
func (p *parser) challenge() (challenge, bool) {
	scheme := p.token()
	if scheme == "" {
		return challenge{}, false
	}
	c := challenge{scheme: strings.ToLower(scheme), params: map[string]string{}}
	p.skipSpace()
	if p.token68() {
		return c, true
	}
	for {
		p.skipSpace()
		if p.done() {
			return c, true
		}
		if p.peek() == ',' {
			// The next parameter of this challenge, or the next challenge.
			save := p.i
			p.skipListSeparators()
			if p.done() {
				return c, true
			}
			if !p.paramAhead() {
				p.i = save
				return c, true
			}
		}
		name, value, ok := p.param()
		if !ok {
			return c, false
		}
		if _, dup := c.params[name]; !dup && len(c.params) < maxParams {
			c.params[name] = value
		}
	}
}

// param parses `token BWS "=" BWS ( token / quoted-string )`, the name lowercased.
func (p *parser) param() (name, value string, ok bool) {
	name = strings.ToLower(p.token())
	if name == "" {
		return "", "", false
	}
	p.skipSpace()
	if p.peek() != '=' {
		return "", "", false
	}
	p.i++
	p.skipSpace()
	if p.peek() == '"' {
		value, ok = p.quoted()
		return name, value, ok
	}
	value = p.token()
	return name, value, value != ""
}

// paramAhead reports whether an auth-param (a token, then "=") rather than a challenge starts
// at the current position.
func (p *parser) paramAhead() bool {
	q := *p
	if q.token() == "" {
		return false
	}
	q.skipSpace()
	return q.peek() == '='
}

// token68 consumes a token68 (1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=")
// that is the whole of a challenge's data, as in "Negotiate YII=", and reports whether there
// was one.
func (p *parser) token68() bool {
	q := *p
	start := q.i
	for !q.done() && (isAlphaNum(q.peek()) || strings.IndexByte("-._~+/", q.peek()) >= 0) {
		q.i++
	}
	if q.i == start {
		return false
	}
	for q.peek() == '=' {
		q.i++
	}
	q.skipSpace()
	if !q.done() && q.peek() != ',' {
		return false // a parameter, or malformed
	}
	*p = q
	return true
}

func isAlphaNum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// quoted parses a quoted-string, undoing its quoted-pairs.
func (p *parser) quoted() (string, bool) {
	p.i++ // opening quote
	var b strings.Builder
	for !p.done() {
		ch := p.s[p.i]
		switch {
		case ch == '"':
			p.i++
			return b.String(), true
		case ch == '\\':
			p.i++
			if p.done() || !isQuotedPairChar(p.s[p.i]) {
				return "", false
			}
			b.WriteByte(p.s[p.i])
		case isQuotedTextChar(ch):
			b.WriteByte(ch)
		default:
			return "", false
		}
		p.i++
	}
	return "", false
}

// isTokenChar is tchar of RFC 9110.
func isTokenChar(c byte) bool {
	return isAlphaNum(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isQuotedTextChar is qdtext: HTAB, SP, VCHAR but '"' and '\', obs-text.
func isQuotedTextChar(c byte) bool {
	return c == '\t' || c == ' ' || c == 0x21 || 0x23 <= c && c <= 0x5b || 0x5d <= c && c <= 0x7e || c >= 0x80
}

// isQuotedPairChar is what may follow '\' in a quoted-string: HTAB, SP, VCHAR, obs-text.
func isQuotedPairChar(c byte) bool {
	return c == '\t' || c == ' ' || 0x21 <= c && c <= 0x7e || c >= 0x80
}

// String formats c as a WWW-Authenticate challenge, parameters sorted by name, every value
// quoted: parseChallenges of the result gives c back.
func (c challenge) String() string {
	var b strings.Builder
	b.WriteString(c.scheme)
	names := make([]string, 0, len(c.params))
	for k := range c.params {
		names = append(names, k)
	}
	sort.Strings(names)
	for i, k := range names {
		if i == 0 {
			b.WriteByte(' ')
		} else {
			b.WriteString(", ")
		}
		b.WriteString(k)
		b.WriteString(`="`)
		for j := 0; j < len(c.params[k]); j++ {
			if ch := c.params[k][j]; ch == '"' || ch == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(c.params[k][j])
		}
		b.WriteByte('"')
	}
	return b.String()
}
