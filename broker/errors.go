package broker

import "errors"

var (
	// ErrInvalidConfig is wrapped by Config.Validate and New for a bad mqtt section; the
	// message lists every problem with its field path ("mqtt.max_packet_bytes: ...").
	ErrInvalidConfig = errors.New("invalid mqtt config")
	// ErrClosed is returned by Publish and Start after Close has begun.
	ErrClosed = errors.New("broker closed")
	// ErrNotStarted is returned by Publish before Start.
	ErrNotStarted = errors.New("broker not started")
	// ErrInvalidTopic is returned by Publish for an empty topic or one with wildcards.
	ErrInvalidTopic = errors.New("invalid topic name")
	// ErrInvalidQoS is returned by Publish for a QoS above 2.
	ErrInvalidQoS = errors.New("invalid qos")
	// ErrHookConflict means more than one mochi hook answers CONNECT authentication or ACL
	// checks. mochi allows when ANY hook allows, so a second one would widen access;
	// the broker refuses to start.
	ErrHookConflict = errors.New("more than one authentication or ACL hook")
	// ErrAppendFailed is the stop cause of a MQTT 3.1.1 connection whose publish could not be
	// stored: 3.1.1 has no negative acknowledgement, so the client is disconnected and will
	// publish again.
	ErrAppendFailed = errors.New("publish could not be stored")
	// ErrRetainedFull is returned by Publish for a retained message that would exceed
	// mqtt.max_retained or mqtt.max_retained_bytes; nothing is published.
	ErrRetainedFull = errors.New("retained message limit reached")
	// ErrClusterBus is wrapped by Publish and PublishReply when the message was delivered on
	// this node but could not be sent to the other nodes (cluster mode). Publishing again may
	// deliver it twice here.
	ErrClusterBus = errors.New("cluster bus unavailable")
	// ErrTokenExpired is the stop cause of a connection closed because its token expired.
	ErrTokenExpired = errors.New("token expired")
)
