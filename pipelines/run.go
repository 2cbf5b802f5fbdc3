package pipelines

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	jobpb "github.com/apache/beam/sdks/v2/go/pkg/beam/model/jobmanagement_v1"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/options/jobopts"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

// ResolveRunner maps the --runner flag to the runner that will execute.
// The legacy Go direct runner cannot run splittable DoFns, state or
// streaming, so "direct" runs on prism, its successor, and says so.
func ResolveRunner(flag string, logger *slog.Logger) (string, error) {
	switch flag {
	case "", "prism", "PrismRunner":
		return "prism", nil
	case "direct", "DirectRunner":
		logger.Warn("the Go direct runner cannot run this job (splittable DoFns, state, streaming); running on prism, the direct runner's successor")
		return "prism", nil
	case "dataflow", "DataflowRunner":
		return "dataflow", nil
	}
	return "", fmt.Errorf("--runner=%q: want prism (default), direct (runs on prism) or dataflow", flag)
}

// Supervisor keeps a streaming job running on prism until its context ends.
//
// Prism fails the whole job when any bundle fails (a Bigtable outage longer
// than the write timeout, say). Nothing is lost then: the failed bundles'
// messages were never acked, so Pub/Sub redelivers them to the next run,
// which the supervisor starts after a backoff.
type Supervisor struct {
	Config StreamingConfig
	Logger *slog.Logger
	// DrainTimeout bounds the drain at shutdown; past it the job is cancelled,
	// and what it had not acked is redelivered to the next run.
	DrainTimeout time.Duration
	// OnFailure, if set, is called with each failed run's error before the
	// restart; tests use it to observe restarts.
	OnFailure func(error)
}

// Run runs the job until ctx is cancelled, then drains it: the source stops
// pulling, the last bundles commit and ack, and Run returns.
func (sv *Supervisor) Run(ctx context.Context) error {
	if err := sv.Config.Validate(); err != nil {
		return err
	}
	if !beam.Initialized() {
		return errors.New("beam.Init() must be called in main before running a pipeline")
	}
	logger := sv.Logger
	if logger == nil {
		logger = slog.Default()
	}
	drainTimeout := sv.DrainTimeout
	if drainTimeout <= 0 {
		drainTimeout = 30 * time.Second
	}
	sub := sv.Config.Subscription
	pubsubsource.Undrain(sub)
	defer pubsubsource.Undrain(sub)

	backoff := time.Second
	for {
		pubsubsource.ResetFlow(sub)
		p, err := Streaming(ctx, sv.Config, "prism")
		if err != nil {
			return err
		}
		done := make(chan error, 1)
		// The job runs with its own context: cancelling ctx drains it instead
		// of tearing it down mid-bundle.
		jobCtx, cancelJob := context.WithCancel(context.WithoutCancel(ctx))
		go func() {
			_, err := prism.Execute(jobCtx, p)
			done <- err
		}()
		logger.Info("streaming job started", "subscription", sub, "runner", "prism")

		select {
		case err = <-done:
			cancelJob()
		case <-ctx.Done():
			logger.Info("draining streaming job", "subscription", sub)
			pubsubsource.Drain(sub)
			select {
			case err = <-done:
				logger.Info("streaming job drained", "subscription", sub)
			case <-time.After(drainTimeout):
				logger.Warn("drain timed out; cancelling the job (unacked messages will be redelivered)", "timeout", drainTimeout)
				cancelPrismJobs(logger)
				cancelJob()
				err = <-done
			}
			cancelJob()
			return err
		}
		if err == nil {
			return nil // the job finished by itself (its source drained)
		}
		logger.Error("streaming job failed; restarting (unacked messages are redelivered)", "error", err, "backoff", backoff)
		if sv.OnFailure != nil {
			sv.OnFailure(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// cancelPrismJobs asks the in-process prism job server to cancel its running jobs.
func cancelPrismJobs(logger *slog.Logger) {
	if *jobopts.Endpoint == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := grpc.NewClient(*jobopts.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		logger.Warn("cannot reach prism to cancel jobs", "error", err)
		return
	}
	defer cc.Close()
	client := jobpb.NewJobServiceClient(cc)
	jobs, err := client.GetJobs(ctx, &jobpb.GetJobsRequest{})
	if err != nil {
		logger.Warn("cannot list prism jobs", "error", err)
		return
	}
	for _, j := range jobs.GetJobInfo() {
		if j.GetState() == jobpb.JobState_RUNNING {
			if _, err := client.Cancel(ctx, &jobpb.CancelJobRequest{JobId: j.GetJobId()}); err != nil {
				logger.Warn("cannot cancel prism job", "job", j.GetJobId(), "error", err)
			}
		}
	}
}
