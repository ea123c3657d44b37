package functions

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/fleetgate/fleetgate/event"
)

// topicTemplate is a compiled republish topic template: literal text with ${subject},
// ${tenant}, ${topic} and ${levels.N} (the N-th level of the event's topic, from 0).
type topicTemplate struct {
	parts []tmplPart
}

type tmplPart struct {
	lit   string
	field string // "" for a literal
	level int
}

func checkTemplate(s string) error {
	_, err := compileTemplate(s)
	return err
}

func compileTemplate(s string) (*topicTemplate, error) {
	t := &topicTemplate{}
	for s != "" {
		i := strings.Index(s, "${")
		if i < 0 {
			t.parts = append(t.parts, tmplPart{lit: s})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, tmplPart{lit: s[:i]})
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("unclosed ${ in %q", s)
		}
		name := s[i+2 : i+j]
		switch {
		case name == "subject" || name == "tenant" || name == "topic":
			t.parts = append(t.parts, tmplPart{field: name})
		case strings.HasPrefix(name, "levels."):
			n, err := strconv.Atoi(name[len("levels."):])
			if err != nil || n < 0 || n > 1024 {
				return nil, fmt.Errorf("bad level in ${%s}: want ${levels.N} with N from 0", name)
			}
			t.parts = append(t.parts, tmplPart{field: "levels", level: n})
		default:
			return nil, fmt.Errorf("unknown variable ${%s}: use ${subject}, ${tenant}, ${topic} or ${levels.N}", name)
		}
		s = s[i+j+1:]
	}
	if strings.ContainsAny(strings.Join(t.lits(), ""), "+#") {
		return nil, fmt.Errorf("wildcards + and # are not allowed in a publish topic")
	}
	return t, nil
}

func (t *topicTemplate) lits() []string {
	var l []string
	for _, p := range t.parts {
		l = append(l, p.lit)
	}
	return l
}

// expand renders the template for e. Substituted values have MQTT wildcards and '/' stripped
// of special meaning only where they came from trusted fields; an empty result is an error.
func (t *topicTemplate) expand(e *event.Event) (string, error) {
	var b strings.Builder
	for _, p := range t.parts {
		switch p.field {
		case "":
			b.WriteString(p.lit)
		case "subject":
			b.WriteString(e.Subject)
		case "tenant":
			b.WriteString(e.Tenant)
		case "topic":
			b.WriteString(e.Topic)
		case "levels":
			lv := strings.Split(e.Topic, "/")
			if p.level >= len(lv) {
				return "", fmt.Errorf("topic %q has no level %d", e.Topic, p.level)
			}
			b.WriteString(lv[p.level])
		}
	}
	s := b.String()
	if s == "" || strings.ContainsAny(s, "+#\x00") {
		return "", fmt.Errorf("rendered topic %q is not a valid publish topic", s)
	}
	return s, nil
}
