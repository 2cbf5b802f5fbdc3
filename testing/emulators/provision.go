package emulators

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"cloud.google.com/go/bigtable"
	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/iotpipe/iotpipe/schemas"
)

// Resources is what Terraform creates in the cloud.
type Resources struct {
	Project        string
	Instance       string              // Bigtable instance id
	Topics         []string            // topic ids
	Subscriptions  map[string]string   // subscription id -> topic id
	BigtableTables map[string][]string // table -> column families
	Buckets        []string
	// BigQueryDataset, if set, is the dataset in which every warehouse
	// table of the schemas package is created on the BigQuery fake, with
	// its partitioning and clustering, as Terraform creates them.
	BigQueryDataset string
}

// subscriptionAckDeadlineSeconds matches the Terraform module's default.
const subscriptionAckDeadlineSeconds = 10

// Provision creates r on the emulators with Google's client libraries. What
// already exists is left as it is, so Provision can run on every start.
func (e *Emulators) Provision(ctx context.Context, r Resources) error {
	if r.Project == "" {
		return errors.New("provision: Resources.Project is empty")
	}
	if len(r.BigtableTables) > 0 && r.Instance == "" {
		return errors.New("provision: Resources.Instance is empty but BigtableTables are set")
	}
	if err := e.provisionPubsub(ctx, r); err != nil {
		return err
	}
	if err := e.provisionBigtable(ctx, r); err != nil {
		return err
	}
	if err := e.provisionBuckets(ctx, r); err != nil {
		return err
	}
	return e.provisionBigQuery(r)
}

// provisionBigQuery creates the warehouse tables on the fake directly:
// tables are made through BigQuery's REST API, which the fake does not
// serve, only the Storage Write API.
func (e *Emulators) provisionBigQuery(r Resources) error {
	if r.BigQueryDataset == "" {
		return nil
	}
	tables, err := schemas.WarehouseTables()
	if err != nil {
		return fmt.Errorf("provision: bigquery tables: %w", err)
	}
	for _, t := range tables {
		err := e.BigQueryWrite.CreateTable(r.Project, r.BigQueryDataset, t)
		if err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("provision: create bigquery table %s: %w", BigQueryTableName(r.Project, r.BigQueryDataset, t.Name), err)
		}
	}
	return nil
}

func (e *Emulators) provisionPubsub(ctx context.Context, r Resources) error {
	if len(r.Topics) == 0 && len(r.Subscriptions) == 0 {
		return nil
	}
	// Explicit options rather than PUBSUB_EMULATOR_HOST: this process may be
	// pointing its environment somewhere else.
	c, err := pubsub.NewClient(ctx, r.Project,
		option.WithEndpoint(e.PubsubAddr),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		option.WithoutAuthentication(),
		option.WithTelemetryDisabled(),
	)
	if err != nil {
		return fmt.Errorf("provision: pubsub client for %s: %w", e.PubsubAddr, err)
	}
	defer c.Close()

	for _, id := range r.Topics {
		name := fmt.Sprintf("projects/%s/topics/%s", r.Project, id)
		_, err := c.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: name})
		if err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("provision: create topic %s: %w", name, err)
		}
	}
	for _, id := range sortedKeys(r.Subscriptions) {
		name := fmt.Sprintf("projects/%s/subscriptions/%s", r.Project, id)
		topic := fmt.Sprintf("projects/%s/topics/%s", r.Project, r.Subscriptions[id])
		_, err := c.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
			Name:               name,
			Topic:              topic,
			AckDeadlineSeconds: subscriptionAckDeadlineSeconds,
		})
		if err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("provision: create subscription %s on %s: %w", name, topic, err)
		}
	}
	return nil
}

func (e *Emulators) provisionBigtable(ctx context.Context, r Resources) error {
	if len(r.BigtableTables) == 0 {
		return nil
	}
	conn, err := grpc.NewClient(e.BigtableAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("provision: dial bigtable emulator %s: %w", e.BigtableAddr, err)
	}
	// AdminClient.Close closes conn.
	ac, err := bigtable.NewAdminClient(ctx, r.Project, r.Instance, option.WithGRPCConn(conn))
	if err != nil {
		conn.Close()
		return fmt.Errorf("provision: bigtable admin client for %s: %w", e.BigtableAddr, err)
	}
	defer ac.Close()

	for _, table := range sortedKeys(r.BigtableTables) {
		err := ac.CreateTable(ctx, table)
		if err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("provision: create bigtable table %s in projects/%s/instances/%s: %w", table, r.Project, r.Instance, err)
		}
		// Add only the families that are missing, so a table created by an
		// earlier run with fewer families converges.
		info, err := ac.TableInfo(ctx, table)
		if err != nil {
			return fmt.Errorf("provision: read bigtable table %s: %w", table, err)
		}
		for _, fam := range r.BigtableTables[table] {
			if slices.Contains(info.Families, fam) {
				continue
			}
			if err := ac.CreateColumnFamily(ctx, table, fam); err != nil && status.Code(err) != codes.AlreadyExists {
				return fmt.Errorf("provision: create column family %s in bigtable table %s: %w", fam, table, err)
			}
		}
	}
	return nil
}

func (e *Emulators) provisionBuckets(ctx context.Context, r Resources) error {
	if len(r.Buckets) == 0 {
		return nil
	}
	c, err := storage.NewClient(ctx,
		option.WithEndpoint(e.GCSURL+"/storage/v1/"),
		option.WithoutAuthentication(),
	)
	if err != nil {
		return fmt.Errorf("provision: storage client for %s: %w", e.GCSURL, err)
	}
	defer c.Close()

	for _, b := range r.Buckets {
		err := c.Bucket(b).Create(ctx, r.Project, nil)
		var gerr *googleapi.Error
		if errors.As(err, &gerr) && gerr.Code == http.StatusConflict {
			continue
		}
		if err != nil {
			return fmt.Errorf("provision: create bucket %s: %w", b, err)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
