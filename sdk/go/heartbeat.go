package agent

import (
	"errors"
	"sync"
	"time"
)

// defaultHeartbeat is the interval when neither the caller nor the manifest gives one.
const defaultHeartbeat = 10 * time.Second

// Heartbeat is a background heartbeat loop started by StartHeartbeat.
type Heartbeat struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// StartHeartbeat sends a heartbeat (with status, "" for none) now and then every interval
// until Stop, in a goroutine. interval 0 means the manifest's heartbeat_s from hello, else
// 10 s. A failed heartbeat is retried within a second; the call reconnects when the
// supervisor has restarted. It ends by itself when the client is closed.
func (c *Client) StartHeartbeat(interval time.Duration, status string) *Heartbeat {
	h := &Heartbeat{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			wait := interval
			if wait <= 0 {
				wait = defaultHeartbeat
				if s := c.Hello().HeartbeatS; s > 0 {
					wait = time.Duration(s) * time.Second
				}
			}
			if _, err := c.Heartbeat(status); err != nil {
				if errors.Is(err, errClosed) {
					return
				}
				if wait > time.Second {
					wait = time.Second
				}
			}
			t := time.NewTimer(wait)
			select {
			case <-h.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// Stop ends the heartbeats and waits for the loop to finish (at most one call in flight).
func (h *Heartbeat) Stop() {
	h.once.Do(func() { close(h.stop) })
	<-h.done
}
