package emulators

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// bigtableWriteMethods are the data-plane RPCs that store cells.
var bigtableWriteMethods = map[string]bool{
	"/google.bigtable.v2.Bigtable/MutateRow":         true,
	"/google.bigtable.v2.Bigtable/MutateRows":        true,
	"/google.bigtable.v2.Bigtable/CheckAndMutateRow": true,
}

// faultBudget decides which calls an emulator fails on demand, and counts
// the calls it was asked about and the ones it failed.
type faultBudget struct {
	mu        sync.Mutex
	remaining int // >0: fail this many more calls; <0: fail until cleared
	code      codes.Code

	calls, failures atomic.Int64
}

// set fails the next n calls with code; n < 0 fails every call until set
// again, n == 0 fails none.
func (f *faultBudget) set(n int, code codes.Code) {
	f.mu.Lock()
	f.remaining, f.code = n, code
	f.mu.Unlock()
}

// take counts a call and reports whether to fail it, and with which code.
func (f *faultBudget) take() (codes.Code, bool) {
	f.calls.Add(1)
	f.mu.Lock()
	fail, code := f.remaining != 0, f.code
	if f.remaining > 0 {
		f.remaining--
	}
	f.mu.Unlock()
	if fail {
		f.failures.Add(1)
	}
	return code, fail
}

// writeFaults fails Bigtable write calls on demand, before they reach the store.
type writeFaults struct {
	faultBudget
}

// FailBigtableWrites makes the next n Bigtable write calls (MutateRow,
// MutateRows, CheckAndMutateRow) fail with codes.Unavailable. n < 0 fails
// them until ClearBigtableFaults; n == 0 clears.
func (e *Emulators) FailBigtableWrites(n int) { e.faults.set(n, codes.Unavailable) }

// ClearBigtableFaults lets Bigtable writes through again.
func (e *Emulators) ClearBigtableFaults() { e.FailBigtableWrites(0) }

// BigtableWriteFailures is how many write calls have been failed by injection.
func (e *Emulators) BigtableWriteFailures() int64 { return e.faults.failures.Load() }

// BigtableWriteCalls is how many write calls have arrived, failed or not.
func (e *Emulators) BigtableWriteCalls() int64 { return e.faults.calls.Load() }

func (f *writeFaults) admit(method string) error {
	if !bigtableWriteMethods[method] {
		return nil
	}
	if code, fail := f.take(); fail {
		return status.Errorf(code, "emulators: injected fault on %s", method)
	}
	return nil
}

func (f *writeFaults) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := f.admit(info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (f *writeFaults) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := f.admit(info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// bttest leaves RPCs it does not implement as nil interface methods, so calling
// one panics, and a panic in a gRPC handler kills the whole process (every
// emulator and the pipeline with it). Turn it into an error for the caller.
func recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (_ any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = status.Errorf(codes.Internal, "bigtable emulator: %s panicked: %v", info.FullMethod, r)
		}
	}()
	return handler(ctx, req)
}

func recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = status.Errorf(codes.Internal, "bigtable emulator: %s panicked: %v", info.FullMethod, r)
		}
	}()
	return handler(srv, ss)
}
