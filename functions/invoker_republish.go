package functions

import (
	"context"
	"fmt"
)

// republishInvoker publishes each event's data to a topic rendered from a template.
type republishInvoker struct {
	tmpl *topicTemplate
	qos  byte
	pub  Publisher
}

var _ Invoker = (*republishInvoker)(nil)

func newRepublishInvoker(def Definition, env Env) (Invoker, error) {
	t, err := compileTemplate(def.Topic)
	if err != nil {
		return nil, fmt.Errorf("topic: %w", err)
	}
	if env.Publisher == nil {
		return nil, ErrNoPublisher
	}
	qos := byte(DefaultQoS)
	if def.QoS != nil {
		qos = *def.QoS
	}
	return &republishInvoker{tmpl: t, qos: qos, pub: env.Publisher}, nil
}

// Invoke publishes every item; items that cannot be published are reported as failed.
func (r *republishInvoker) Invoke(ctx context.Context, b *Batch) (Result, error) {
	var res Result
	var lastErr error
	for i := range b.Items {
		if err := ctx.Err(); err != nil {
			return Result{}, fmt.Errorf("%w: %v", ErrRetryable, err)
		}
		it := &b.Items[i]
		data := it.Data
		if data == nil {
			data = it.Event.Data
		}
		topic, err := r.tmpl.expand(it.Event)
		if err == nil {
			err = r.pub.Publish(topic, data, r.qos, false)
		}
		if err != nil {
			lastErr = err
			res.Failed = append(res.Failed, it.Event.ID)
		}
	}
	if len(res.Failed) == len(b.Items) && lastErr != nil {
		return Result{}, fmt.Errorf("%w: republishing: %v", ErrRetryable, lastErr)
	}
	return res, nil
}
