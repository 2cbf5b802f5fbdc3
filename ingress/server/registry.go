package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/iotpipe/iotpipe/ingress/registry"
)

// ensureRegistry makes sure the bridge's registry exists, creating it with
// EventsTopic and StateTopic as its notification configs if it does not
// and they are given. An existing registry is left as it is: its configs,
// which the admin API owns, are what routes messages.
func ensureRegistry(ctx context.Context, store *registry.Store, cfg Config, logger *slog.Logger) error {
	p := registry.Path{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry}
	want := registry.Registry{ID: cfg.Registry}
	if cfg.EventsTopic != "" {
		want.EventNotificationConfigs = []registry.EventNotificationConfig{{PubsubTopicName: topicName(cfg.Project, cfg.EventsTopic)}}
	}
	if cfg.StateTopic != "" {
		want.StateNotificationConfig.PubsubTopicName = topicName(cfg.Project, cfg.StateTopic)
	}
	seed := cfg.EventsTopic != "" || cfg.StateTopic != ""

	got, err := store.GetRegistry(ctx, p)
	if errors.Is(err, registry.ErrNotFound) && seed {
		got, err = store.CreateRegistry(ctx, cfg.Project, cfg.Location, want)
		if err == nil {
			logger.Info("created the device registry", "registry", p.String(),
				"events_topic", want.EventNotificationConfigs, "state_topic", want.StateNotificationConfig.PubsubTopicName)
			return nil
		}
		if errors.Is(err, registry.ErrAlreadyExists) { // another instance was first
			got, err = store.GetRegistry(ctx, p)
		}
	}
	switch {
	case errors.Is(err, registry.ErrNotFound):
		logger.Warn("the device registry does not exist: no device can connect until it is created (admin API POST /v1/projects/{p}/locations/{l}/registries, or start with an events topic)",
			"registry", p.String())
		return nil
	case err != nil:
		return fmt.Errorf("reading registry %s: %w", p, err)
	}
	if seed {
		events, _ := registry.EventTopic(got, "")
		if (cfg.EventsTopic != "" && events != topicName(cfg.Project, cfg.EventsTopic)) ||
			(cfg.StateTopic != "" && got.StateNotificationConfig.PubsubTopicName != topicName(cfg.Project, cfg.StateTopic)) {
			logger.Warn("the registry exists with other notification configs, which route messages: the events and state topics only seed a new registry",
				"registry", p.String(), "eventNotificationConfigs", got.EventNotificationConfigs, "stateNotificationConfig", got.StateNotificationConfig)
		}
	}
	return nil
}

// topicName returns the full name of topic, an id in project or already a
// projects/{p}/topics/{t} name: the form notification configs hold.
func topicName(project, topic string) string {
	if strings.HasPrefix(topic, "projects/") {
		return topic
	}
	return "projects/" + project + "/topics/" + topic
}
