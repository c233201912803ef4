-- schema written by segloop as of 2026-12-03 (commit c1e1dfe), before Alembic
CREATE TABLE store_meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
CREATE TABLE label_classes (
	value INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	red INTEGER NOT NULL, 
	green INTEGER NOT NULL, 
	blue INTEGER NOT NULL, 
	PRIMARY KEY (value), 
	UNIQUE (name)
);
CREATE TABLE images (
	id VARCHAR(128) NOT NULL, 
	id_key VARCHAR(128) NOT NULL, 
	name TEXT NOT NULL, 
	source TEXT NOT NULL, 
	modality VARCHAR(64) NOT NULL, 
	shape JSON NOT NULL, 
	spacing JSON NOT NULL, 
	affine JSON NOT NULL, 
	channels INTEGER NOT NULL, 
	dtype VARCHAR(32) NOT NULL, 
	metadata JSON NOT NULL, 
	path TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	label_state VARCHAR(8) NOT NULL, 
	latest_revision INTEGER, 
	latest_author TEXT, 
	PRIMARY KEY (id), 
	UNIQUE (id_key)
);
CREATE INDEX ix_images_created ON images (created_at, id);
CREATE INDEX ix_images_label_state ON images (label_state);
CREATE TABLE models (
	name VARCHAR(128) NOT NULL, 
	config JSON NOT NULL, 
	current_version INTEGER, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE label_revisions (
	id INTEGER NOT NULL, 
	image_id VARCHAR(128) NOT NULL, 
	revision INTEGER NOT NULL, 
	parent INTEGER, 
	author TEXT NOT NULL, 
	source TEXT NOT NULL, 
	status VARCHAR(8) NOT NULL, 
	created_at DATETIME NOT NULL, 
	path TEXT NOT NULL, 
	dtype VARCHAR(16) NOT NULL, 
	voxel_counts JSON NOT NULL, 
	finalized_by TEXT, 
	finalized_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_label_revisions_image_revision UNIQUE (image_id, revision), 
	FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE
);
CREATE INDEX ix_label_revisions_status ON label_revisions (status, image_id, revision);
CREATE TABLE model_versions (
	id INTEGER NOT NULL, 
	model VARCHAR(128) NOT NULL, 
	version INTEGER NOT NULL, 
	checkpoint TEXT NOT NULL, 
	config JSON NOT NULL, 
	trained_on JSON NOT NULL, 
	metrics JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_model_versions_model_version UNIQUE (model, version), 
	FOREIGN KEY(model) REFERENCES models (name) ON DELETE CASCADE
);
INSERT INTO store_meta VALUES('schema_version','1');
