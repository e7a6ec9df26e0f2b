package verify

import (
	"fmt"
	"regexp"
	"strings"
)

// glob matches image names ("registry/repository") and namespaces: '*' matches within one
// path segment, '**' matches any number of whole segments, including none, and '**' alone
// matches everything.
type glob struct {
	pattern string
	re      *regexp.Regexp
}

// everything is what '**' alone means: a rule for every image, or for every namespace.
var everything = regexp.MustCompile(`^.+$`)

func compileGlob(pattern string) (glob, error) {
	switch pattern {
	case "":
		return glob{}, fmt.Errorf("empty pattern")
	case "**":
		return glob{pattern: pattern, re: everything}, nil
	}
	_, path, _ := strings.Cut(pattern, "/")
	if strings.Contains(pattern, "@") || strings.Contains(path, ":") {
		return glob{}, fmt.Errorf("%q: match image names without tag or digest", pattern)
	}
	var b strings.Builder
	b.WriteString("^")
	segs := strings.Split(pattern, "/")
	segs[0] = hostKey(segs[0])
	for i, seg := range segs {
		switch {
		case seg == "**" && i == len(segs)-1:
			// "a/**" matches "a" itself and everything below it.
			b.WriteString("(/.*)?")
			continue
		case seg == "**":
			b.WriteString("(/[^/]+)*")
			if i == 0 {
				return glob{}, fmt.Errorf("%q: '**' cannot be the registry; use '*' for any registry", pattern)
			}
			continue
		case strings.Contains(seg, "**"):
			return glob{}, fmt.Errorf("%q: '**' must be a whole path segment", pattern)
		}
		if i > 0 {
			b.WriteString("/")
		}
		for j, part := range strings.Split(seg, "*") {
			if j > 0 {
				b.WriteString("[^/]*")
			}
			b.WriteString(regexp.QuoteMeta(part))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return glob{}, fmt.Errorf("%q: %w", pattern, err)
	}
	return glob{pattern: pattern, re: re}, nil
}

func (g glob) match(s string) bool { return g.re.MatchString(s) }

// all tells a glob that matches every name, such as a namespace glob of '*' or '**'.
func (g glob) all() bool { return g.pattern == "*" || g.pattern == "**" }
