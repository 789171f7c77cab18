Feature: Container managers
  A container manager is where a cluster's hosts are registered as nodes:
  "trivial" keeps them in memory, "openshift" (and "kubernetes") talk to an API
  server and need its URL.

  Scenario: Create a trivial container manager and read it back
    When I PUT /api/v0/containermanager/$cm with:
      """
      {"type": "trivial"}
      """
    Then the response status is 201
    And the response is:
      """
      {"name": "$cm", "type": "trivial", "options": {}}
      """
    When I GET /api/v0/containermanager/$cm
    Then the response status is 200
    And the response is:
      """
      {"name": "$cm", "type": "trivial", "options": {}}
      """
    When I GET /api/v0/containermanagers
    Then the response status is 200
    And the response list contains "$cm"

  Scenario: An openshift container manager needs the API server's URL
    When I PUT /api/v0/containermanager/$cm with:
      """
      {"type": "openshift"}
      """
    Then the response status is 400
    And the error message mentions "server_url"
    And GET /api/v0/containermanager/$cm answers 404
    When I PUT /api/v0/containermanager/$cm with:
      """
      {"type": "openshift", "options": {"server_url": "https://openshift.example.com:8443"}}
      """
    Then the response status is 201
    And the response is:
      """
      {"name": "$cm", "type": "openshift", "options": {"server_url": "https://openshift.example.com:8443"}}
      """

  Scenario: Without a type a container manager is an openshift one
    When I PUT /api/v0/containermanager/$cm
    Then the response status is 400
    And the error message mentions "server_url"

  Scenario: Re-creating a container manager with the same attributes changes nothing
    Given I have created /api/v0/containermanager/$cm with:
      """
      {"type": "trivial"}
      """
    When I PUT /api/v0/containermanager/$cm with:
      """
      {"type": "trivial", "options": {}}
      """
    Then the response status is 201
    And the response is:
      """
      {"name": "$cm", "type": "trivial", "options": {}}
      """

  Scenario: Re-creating a container manager with other attributes is a conflict
    Given I have created /api/v0/containermanager/$cm with:
      """
      {"type": "trivial"}
      """
    When I PUT /api/v0/containermanager/$cm with:
      """
      {"type": "openshift", "options": {"server_url": "https://openshift.example.com:8443"}}
      """
    Then the response status is 409
    And the error message mentions "$cm"
    When I GET /api/v0/containermanager/$cm
    Then the response field "/type" is "trivial"

  Scenario: A container manager type that does not exist is refused
    When I PUT /api/v0/containermanager/$cm with:
      """
      {"type": "mesos"}
      """
    Then the response status is 400
    And the error message mentions "type"
    And GET /api/v0/containermanager/$cm answers 404

  Scenario: A container manager that does not exist
    When I GET /api/v0/containermanager/$missing
    Then the response status is 404
    When I DELETE /api/v0/containermanager/$missing
    Then the response status is 404

  Scenario: Delete a container manager
    Given I have created /api/v0/containermanager/$cm with:
      """
      {"type": "trivial"}
      """
    When I DELETE /api/v0/containermanager/$cm
    Then the response status is 200
    And the response is:
      """
      []
      """
    And GET /api/v0/containermanager/$cm answers 404
    When I GET /api/v0/containermanagers/
    Then the response list does not contain "$cm"

  Scenario: A container manager that a cluster uses cannot be deleted
    Given I have created /api/v0/containermanager/$cm with:
      """
      {"type": "trivial"}
      """
    And I have created /api/v0/cluster/$cluster with:
      """
      {"container_manager": "$cm"}
      """
    When I DELETE /api/v0/containermanager/$cm
    Then the response status is 409
    And the error message mentions "$cluster"
    When I DELETE /api/v0/cluster/$cluster
    Then the response status is 200
    When I DELETE /api/v0/containermanager/$cm
    Then the response status is 200
