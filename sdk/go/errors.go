package agent

import (
	"errors"
	"io"
)

// Error codes carried by the supervisor's error answers.
const (
	CodeBadRequest  = "bad_request"
	CodeDenied      = "denied"
	CodeUnavailable = "unavailable"
	CodeLimit       = "limit"
)

// Sentinels to test errors with errors.Is.
var (
	ErrBadRequest   = errors.New("nanoclaw: bad request")       // the request was malformed or invalid
	ErrDenied       = errors.New("nanoclaw: denied")            // the policy refuses it
	ErrUnavailable  = errors.New("nanoclaw: unavailable")       // the supervisor cannot serve it now
	ErrLimit        = errors.New("nanoclaw: limit exceeded")    // a socket or size limit was crossed
	ErrDisconnected = errors.New("nanoclaw: disconnected")      // no socket, or the connection was lost
	ErrTimeout      = errors.New("nanoclaw: no answer in 10 s") // the supervisor did not answer in time
)

// Error is a refusal from the supervisor: Reason is the answer's error text, unchanged, and
// Code its code ("bad_request", "denied", "unavailable", "limit", or "" when the answer had
// none). errors.Is matches it against ErrBadRequest, ErrDenied, ErrUnavailable and ErrLimit.
type Error struct {
	Code   string
	Reason string
}

func (e *Error) Error() string {
	if e.Code == "" {
		return "nanoclaw: " + e.Reason
	}
	return "nanoclaw: " + e.Code + ": " + e.Reason
}

// Is reports whether target is the sentinel for e's code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrBadRequest:
		return e.Code == CodeBadRequest
	case ErrDenied:
		return e.Code == CodeDenied
	case ErrUnavailable:
		return e.Code == CodeUnavailable
	case ErrLimit:
		return e.Code == CodeLimit
	}
	return false
}

// disconnected is ErrDisconnected with its cause (a dial error, EOF, or the supervisor's
// error line that preceded the close, which errors.As then finds as an *Error).
type disconnected struct{ cause error }

func (d *disconnected) Error() string {
	if d.cause == nil || d.cause == io.EOF {
		return "nanoclaw: disconnected: the supervisor closed the connection"
	}
	return "nanoclaw: disconnected: " + d.cause.Error()
}

func (d *disconnected) Is(target error) bool { return target == ErrDisconnected }
func (d *disconnected) Unwrap() error        { return d.cause }

var errClosed = errors.New("the client is closed")
