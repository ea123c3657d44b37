package broker

import (
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// topicsFixture is an index with plain, wildcard, shared and inline subscriptions.
func topicsFixture() *mqtt.TopicsIndex {
	x := mqtt.NewTopicsIndex()
	for i, f := range []string{
		"devices/d1/cmd", "devices/+/state", "fleet/#", "a/b/#", "+/x", "$SYS/broker/#",
		"$share/g1/shared/+/t", "exact", "deep/1/2/3/4",
	} {
		x.Subscribe("c"+string(rune('a'+i)), packets.Subscription{Filter: f, Qos: 1})
	}
	x.InlineSubscribe(mqtt.InlineSubscription{Subscription: packets.Subscription{Filter: "inline/+", Identifier: 1}})
	return x
}

func subscriberCount(x *mqtt.TopicsIndex, topic string) int {
	s := x.Subscribers(topic)
	return len(s.Subscriptions) + len(s.Shared) + len(s.InlineSubscriptions)
}

// checkHasSubscribers: HasSubscribers never says false where Subscribers finds someone, and
// says the same as Subscribers for topics not starting with $ (for those it may say true when
// only a top-level wildcard, which does not match them, is there).
func checkHasSubscribers(t *testing.T, x *mqtt.TopicsIndex, topic string) {
	t.Helper()
	n, has := subscriberCount(x, topic), x.HasSubscribers(topic)
	if n > 0 && !has {
		t.Fatalf("HasSubscribers(%q) = false, Subscribers found %d", topic, n)
	}
	if n == 0 && has && !strings.HasPrefix(topic, "$") {
		t.Fatalf("HasSubscribers(%q) = true, Subscribers found none", topic)
	}
}

// TestHasSubscribersMatchesSubscribers: the patched mochi's allocation-free check, which lets
// the broker skip handing a committed publish no one subscribes to to mochi, agrees with
// mochi's own Subscribers.
func TestHasSubscribersMatchesSubscribers(t *testing.T) {
	x := topicsFixture()
	cases := map[string]bool{
		"devices/d1/cmd": true, "devices/d2/cmd": false, "devices/d2/state": true,
		"devices/d2/state/x": false, "fleet": true, "fleet/a/b": true, "a/b": true, "a/b/c/d": true,
		"a/c": false, "q/x": true, "q/y": false, "$SYS/broker/load": true, "$SYS/x": true /* "+/x": conservative for $ topics */, "$SYS/y": false,
		"shared/1/t": true, "shared/1/u": false, "exact": true, "exact/more": false,
		"deep/1/2/3/4": true, "deep/1/2/3": false, "inline/1": true, "inline/1/2": false,
		"telemetry/d1": false, "": false,
	}
	for topic, want := range cases {
		checkHasSubscribers(t, x, topic)
		if got := x.HasSubscribers(topic); got != want {
			t.Errorf("HasSubscribers(%q) = %v, want %v", topic, got, want)
		}
	}
	if a := testing.AllocsPerRun(100, func() { x.HasSubscribers("devices/d2/cmd") }); a != 0 {
		t.Errorf("HasSubscribers allocates %v times per call", a)
	}
	empty := mqtt.NewTopicsIndex()
	if empty.HasSubscribers("devices/d1/cmd") {
		t.Error("an empty index has subscribers")
	}
}

// FuzzHasSubscribers compares HasSubscribers with Subscribers on topics from the network.
func FuzzHasSubscribers(f *testing.F) {
	for _, s := range []string{"devices/d1/cmd", "a/b", "/", "//", "$SYS/broker/x", "fleet", "+/x", "a/+/#", "q/x", "inline/z"} {
		f.Add(s)
	}
	x := topicsFixture()
	f.Fuzz(func(t *testing.T, topic string) {
		checkHasSubscribers(t, x, topic)
	})
}

// TestGenerationMovesOnEveryChange: the patched index's generation, which lets a session keep
// HasSubscribers' answer for its topic, moves on at every kind of subscribe and unsubscribe.
func TestGenerationMovesOnEveryChange(t *testing.T) {
	x := mqtt.NewTopicsIndex()
	changes := []func(){
		func() { x.Subscribe("c1", packets.Subscription{Filter: "a/b", Qos: 1}) },
		func() { x.Subscribe("c2", packets.Subscription{Filter: "$share/g/a/+", Qos: 1}) },
		func() {
			x.InlineSubscribe(mqtt.InlineSubscription{Subscription: packets.Subscription{Filter: "a/#", Identifier: 1}})
		},
		func() { x.Unsubscribe("a/b", "c1") },
		func() { x.Unsubscribe("$share/g/a/+", "c2") },
		func() { x.InlineUnsubscribe(1, "a/#") },
	}
	for i, change := range changes {
		was := x.Generation()
		change()
		if x.Generation() == was {
			t.Fatalf("change %d left the generation at %d", i, was)
		}
	}
	if x.HasSubscribers("a/b") {
		t.Fatal("subscribers left after every unsubscribe")
	}
}
