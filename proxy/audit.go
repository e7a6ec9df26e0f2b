package proxy

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/verify"
)

// Verdicts of an audit, besides verdictAllowed and verdictDenied.
const (
	// AuditWarned is an image a warn-mode rule allows although its verification failed: it
	// would be denied if the rule were switched to enforce.
	AuditWarned = "warned"
	// AuditUnknown is an image never verified on this node under its rule.
	AuditUnknown = "unknown"
)

// AuditEntry is one name of an image in the runtime's store, and what the policy decides for it.
type AuditEntry struct {
	// Image is name@digest, or name:tag when the store holds no registry digest for the name.
	Image   string   `json:"image"`
	Tags    []string `json:"tags,omitempty"`
	ID      string   `json:"id"`
	Verdict string   `json:"verdict"`
	Rule    string   `json:"rule"`
	Mode    string   `json:"mode,omitempty"`
	Reason  string   `json:"reason,omitempty"`
}

// Audit lists every image in the runtime's store with its decision under v's policy, from what
// the node knows (as ImageStatus and CreateContainer decide), never asking a registry. An empty
// namespace asks for a decision that holds in every namespace.
func Audit(ctx context.Context, images runtimeapi.ImageServiceClient, v Verifier, namespace string) ([]AuditEntry, error) {
	list, err := images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("list the runtime's images: %w", err)
	}
	var out []AuditEntry
	for _, st := range list.GetImages() {
		stored := parseStored(st)
		for _, img := range stored.names() {
			digests := stored.digestsOf(img)
			if len(digests) == 0 {
				digests = []digest.Digest{""}
			}
			for _, dg := range digests {
				d, err := v.Known(ctx, verify.Request{Image: img, Digest: dg, Namespace: namespace, AllNamespaces: namespace == ""})
				if err != nil {
					return nil, fmt.Errorf("%s: %w", img.Name(), err)
				}
				e := AuditEntry{Image: img.Name() + "@" + dg.String(), ID: st.GetId(), Rule: d.Rule, Mode: string(d.Mode), Reason: d.Reason, Tags: stored.tagsOf(img)}
				if dg == "" && len(e.Tags) > 0 {
					e.Image = e.Tags[0]
				}
				switch {
				case d.Unknown:
					e.Verdict = AuditUnknown
				case d.Allowed && d.Reason != "":
					e.Verdict = AuditWarned
				case d.Allowed:
					e.Verdict = verdictAllowed
				default:
					e.Verdict = verdictDenied
				}
				out = append(out, e)
			}
		}
	}
	slices.SortFunc(out, func(a, b AuditEntry) int { return strings.Compare(a.Image, b.Image) })
	return out, nil
}
