Feature: Hosts
  A host is added with the SSH key to reach it (base64, never shown again except
  by /creds) and, optionally, the cluster it joins.

  Background:
    Given I have created /api/v0/cluster/$cluster

  Scenario: Add a host to a cluster
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$cluster"}
      """
    Then the response status is 201
    And the response contains:
      """
      {"address": "$host", "status": "", "os": "", "cpus": 0, "memory": 0, "space": 0}
      """
    And the response has no field "/ssh_priv_key"
    And the response does not mention "c3NoLWtleS1vbmU="
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      ["$host"]
      """

  Scenario: Read a host, its credentials and its status
    Given I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "remote_user": "cloud-user", "cluster": "$cluster", "os": "fedora", "cpus": 4}
      """
    When I GET /api/v0/host/$host
    Then the response status is 200
    And the response contains:
      """
      {"address": "$host", "os": "fedora", "cpus": 4}
      """
    And the response has no field "/ssh_priv_key"
    And the response does not mention "c3NoLWtleS1vbmU="
    When I GET /api/v0/host/$host/creds
    Then the response status is 200
    And the response is:
      """
      {"address": "$host", "ssh_priv_key": "c3NoLWtleS1vbmU=", "remote_user": "cloud-user"}
      """
    When I GET /api/v0/host/$host/status
    Then the response status is 200
    And the response is:
      """
      {"type": "host_only", "host": {"last_check": "", "status": ""}, "container_manager": {}}
      """
    When I GET /api/v0/hosts
    Then the response status is 200
    And the response list contains "$host"
    And the response does not mention "c3NoLWtleS1vbmU="

  Scenario: Credentials default to the root user
    Given I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU="}
      """
    When I GET /api/v0/host/$host/creds
    Then the response is:
      """
      {"address": "$host", "ssh_priv_key": "c3NoLWtleS1vbmU=", "remote_user": "root"}
      """

  Scenario: Re-creating a host with the same key changes nothing
    Given I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$cluster"}
      """
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$cluster"}
      """
    Then the response status is 201
    And the response field "/address" is "$host"
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      ["$host"]
      """

  Scenario: Re-creating a host with another key is a conflict
    Given I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU="}
      """
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS10d28="}
      """
    Then the response status is 409
    And the error message mentions "$host"
    When I GET /api/v0/host/$host/creds
    Then the response field "/ssh_priv_key" is "c3NoLWtleS1vbmU="

  Scenario: An address in the body that differs from the URL is refused
    When I PUT /api/v0/host/$host with:
      """
      {"address": "$other", "ssh_priv_key": "c3NoLWtleS1vbmU="}
      """
    Then the response status is 400
    And the error message mentions "address"
    And GET /api/v0/host/$host answers 404
    And GET /api/v0/host/$other answers 404

  Scenario: A host body with an unknown field is refused, naming it
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "flavour": "large"}
      """
    Then the response status is 400
    And the error message mentions "flavour"
    And GET /api/v0/host/$host answers 404

  Scenario: A host field of the wrong type is refused, naming it
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cpus": "4"}
      """
    Then the response status is 400
    And the error message mentions "cpus"
    And GET /api/v0/host/$host answers 404
    And GET /api/v0/host/$host/creds answers 404

  Scenario: A key that is not base64 is refused
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}
      """
    Then the response status is 400
    And the error message mentions "ssh_priv_key"
    And GET /api/v0/host/$host answers 404

  Scenario: A host cannot join a cluster that does not exist
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$nocluster"}
      """
    Then the response status is 409
    And the error message mentions "$nocluster"
    And GET /api/v0/host/$host answers 404

  Scenario: A host that registers itself gets the address it connects from
    When I PUT /api/v0/host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU="}
      """
    Then the response status is 201
    And the response field "/address" is "127.0.0.1"
    When I GET /api/v0/host/127.0.0.1
    Then the response status is 200
    When I GET /api/v0/host/127.0.0.1/creds
    Then the response field "/ssh_priv_key" is "c3NoLWtleS1vbmU="
    When I DELETE /api/v0/host/127.0.0.1
    Then the response status is 200
    # X-Forwarded-For counts only from trusted proxies (none here).
    When I PUT /api/v0/host with the header "X-Forwarded-For: 192.0.2.10" and:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU="}
      """
    Then the response status is 201
    And the response field "/address" is "127.0.0.1"
    And GET /api/v0/host/192.0.2.10 answers 404
    When I DELETE /api/v0/host/127.0.0.1
    Then the response status is 200

  Scenario: Delete a host
    Given I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$cluster"}
      """
    When I DELETE /api/v0/host/$host
    Then the response status is 200
    And the response is:
      """
      []
      """
    And GET /api/v0/host/$host answers 404
    And GET /api/v0/host/$host/creds answers 404
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      []
      """
    When I GET /api/v0/hosts
    Then the response list does not contain "$host"

  Scenario: A host that does not exist
    When I GET /api/v0/host/$missing
    Then the response status is 404
    When I GET /api/v0/host/$missing/creds
    Then the response status is 404
    When I GET /api/v0/host/$missing/status
    Then the response status is 404
    When I DELETE /api/v0/host/$missing
    Then the response status is 404
